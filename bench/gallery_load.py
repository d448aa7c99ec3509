"""Page size and load time of a 200-video batch gallery in headless Chromium (Debian's chromium + chromedriver).

    .venv/bin/python bench/gallery_load.py [--videos 200]

Writes a gallery of N real MP4s (17x64x64 from the tiny model, reused under N names) to a temporary folder, serves it
on 127.0.0.1 and reports index.html's bytes, the total bytes of the videos, DOMContentLoaded / load times and the
time until every <video> has its metadata (preload="metadata").
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from dcm.io.model_folder import load_pipeline
from dcm.io.video import encode_mp4
from dcm.pages.gallery import GalleryItem, RunSummary, render_gallery

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    dcm = load_pipeline("tiny-wan")
    clips = [encode_mp4(f, fps=8) for f in dcm.generate([f"prompt {i}" for i in range(4)], seeds=list(range(4)))]
    folder = tempfile.mkdtemp(prefix="dcm-gallery-")
    items = []
    for i in range(args.videos):
        with open(os.path.join(folder, f"v{i:04d}.mp4"), "wb") as f:
            f.write(clips[i % len(clips)])
        items.append(GalleryItem(id=f"v{i:04d}", prompt=f"a red circle moving left, take {i}", seed=i, status="ok",
                                 video_href=f"v{i:04d}.mp4", params={"num_frames": 17, "height": 64, "width": 64},
                                 seconds=0.1))  # fmt: skip
    page = render_gallery(items, RunSummary(title="bench", model="tiny-wan", wall_seconds=10.0, num_ok=args.videos,
                                            num_error=0, num_skipped=0))  # fmt: skip
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write(page)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="dcm-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    dom, load, meta = [], [], []
    try:
        for _ in range(args.repeats):
            driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
            start = time.perf_counter()
            driver.get(url)
            timing = driver.execute_script("const t = performance.timing; return [t.domContentLoadedEventEnd - "
                                           "t.navigationStart, t.loadEventEnd - t.navigationStart]")  # fmt: skip
            while not driver.execute_script("return Array.from(document.querySelectorAll('video'))"
                                            ".every(v => v.readyState >= 1)"):  # fmt: skip
                time.sleep(0.05)
            meta.append(time.perf_counter() - start)
            dom.append(timing[0] / 1000)
            load.append(timing[1] / 1000)
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    video_bytes = sum(os.path.getsize(os.path.join(folder, f"v{i:04d}.mp4")) for i in range(args.videos))
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.videos} videos, median of {args.repeats} cold loads (cache disabled)")
    print(f"index.html: {len(page.encode()):,} bytes; videos: {video_bytes:,} bytes")
    print(f"DOMContentLoaded {statistics.median(dom):.3f} s, load {statistics.median(load):.3f} s, "
          f"all video metadata {statistics.median(meta):.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
