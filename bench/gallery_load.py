"""The batch gallery of a large output in headless Chromium: the paged gallery the job writes against one page of
every row (the gallery before pages).

    .venv/bin/python bench/gallery_load.py [--rows 20000] [--page-size 200] [--single-rows 2000] [--repeats 3]

Writes an output folder of N rows (real 17x64x64 MP4s from the tiny model, four clips hard-linked under N names),
writes its gallery with the job's own ``write_gallery`` (pages of ``--page-size`` rows, the job's page cap), serves it
on 127.0.0.1 and reports, median of ``--repeats`` cold loads (cache disabled): the bytes of a page, DOMContentLoaded
and load times, and the time until every ``<video>`` of the page has its metadata; then the same for one page holding
the first ``--single-rows`` rows, as the gallery was before pages (DOMContentLoaded and load only; a single page of
every row grows with the output). Needs Debian's chromium and chromium-driver.
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

from dcm.cluster.batch import DEFAULT_GALLERY_MAX_PAGES, write_gallery
from dcm.io.model_folder import load_pipeline
from dcm.io.storage import Store
from dcm.io.video import encode_mp4
from dcm.manifest import output_key
from dcm.pages.gallery import GalleryItem, RunSummary, page_name, render_gallery
from dcm.results import record, records_table

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip
NUM_CLIPS = 4
PAGE_LOAD_TIMEOUT_S = 300
TIMING_JS = ("const t = performance.timing; return [t.domContentLoadedEventEnd - t.navigationStart, "
             "t.loadEventEnd - t.navigationStart]")  # fmt: skip
METADATA_JS = "return Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 1)"


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


def make_output(folder: str, rows: int, page_size: int, single_rows: int) -> tuple[float, int, str]:
    """(seconds to write the paged gallery, pages written, the single page's file name)."""
    dcm = load_pipeline("tiny-wan")
    clips = [encode_mp4(f, fps=8) for f in dcm.generate([f"prompt {i}" for i in range(NUM_CLIPS)],
                                                        seeds=list(range(NUM_CLIPS)))]  # fmt: skip
    for i, clip in enumerate(clips):
        with open(os.path.join(folder, f"clip{i}.bin"), "wb") as f:
            f.write(clip)
    store = Store(folder)
    records = []
    for i in range(rows):
        rid = f"v{i:07d}"
        os.link(os.path.join(folder, f"clip{i % NUM_CLIPS}.bin"), os.path.join(folder, output_key(rid)))
        records.append(record(id=rid, row=i, prompt=f"a red circle moving left, take {i}", seed=i, num_frames=17,
                              height=64, width=64, num_inference_steps=4, fps=8, status="ok", seconds=0.1,
                              bytes=len(clips[i % NUM_CLIPS]), model="tiny-wan", run_id="bench"))  # fmt: skip
    view = records_table(records)
    summary = RunSummary(title="bench", model="tiny-wan", wall_seconds=10.0, num_ok=rows, num_error=0,
                         num_skipped=0, run_id="bench", totals={"ok": rows})  # fmt: skip
    start = time.perf_counter()
    write_gallery(store, view, summary, page_size=page_size, max_pages=DEFAULT_GALLERY_MAX_PAGES)
    seconds = time.perf_counter() - start
    pages = len([n for n in os.listdir(folder) if n.startswith("index") and n.endswith(".html")])
    items = [GalleryItem(id=r["id"], prompt=r["prompt"], seed=r["seed"], status="ok", video_href=output_key(r["id"]),
                         params={"num_frames": 17}, seconds=0.1) for r in records[:single_rows]]  # fmt: skip
    with open(os.path.join(folder, "single.html"), "w", encoding="utf-8") as f:
        f.write(render_gallery(items, summary))
    return seconds, pages, "single.html"


def load(driver, url: str, repeats: int, *, metadata: bool) -> tuple[float, float, float]:
    """Median (DOMContentLoaded, load, all video metadata) seconds of cold loads; metadata NaN when not waited for."""
    dom, done, meta = [], [], []
    for _ in range(repeats):
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        start = time.perf_counter()
        driver.get(url)
        timing = driver.execute_script(TIMING_JS)
        if metadata:
            while not driver.execute_script(METADATA_JS):
                time.sleep(0.05)
            meta.append(time.perf_counter() - start)
        dom.append(timing[0] / 1000)
        done.append(timing[1] / 1000)
    return statistics.median(dom), statistics.median(done), statistics.median(meta) if meta else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000, help="rows of the output")
    parser.add_argument("--page-size", type=int, default=200, help="rows per gallery page")
    parser.add_argument("--single-rows", type=int, default=2000, help="rows of the one-page comparison")
    parser.add_argument("--repeats", type=int, default=3, help="cold loads per page (the median is printed)")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = tempfile.mkdtemp(prefix="dcm-gallery-")
    profile = tempfile.mkdtemp(prefix="dcm-chromium-")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    try:
        write_s, pages, single = make_output(folder, args.rows, args.page_size, args.single_rows)
        middle = page_name(max(1, pages // 2))
        measured = {name: load(driver, base + name, args.repeats, metadata=True) for name in ("index.html", middle)}
        measured[single] = load(driver, base + single, args.repeats, metadata=False)
        sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in measured}
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.rows} rows; paged gallery: {pages} pages of {args.page_size} rows written in {write_s:.2f} s "
          f"(page cap {DEFAULT_GALLERY_MAX_PAGES}); median of {args.repeats} cold loads")  # fmt: skip
    print(f"{'page':34}{'bytes':>14}{'DOMContentLoaded s':>20}{'load s':>10}{'video metadata s':>18}")
    for name, (dom, done, meta) in measured.items():
        label = f"{name} ({args.single_rows} rows on one page)" if name == single else name
        print(f"{label:34}{sizes[name]:>14,}{dom:>20.3f}{done:>10.3f}{meta:>18.3f}")
    ratio = sizes[single] / sizes["index.html"]
    print(f"one page of {args.single_rows} rows is {ratio:.0f}x the bytes of a gallery page and takes "
          f"{measured[single][1] / measured['index.html'][1]:.0f}x as long to load")  # fmt: skip


if __name__ == "__main__":
    main()
