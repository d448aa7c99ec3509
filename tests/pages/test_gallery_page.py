"""The batch gallery page in a real headless Chromium: videos play, filters work, prompts cannot inject markup."""

import os
import time

import pytest
from selenium.webdriver.common.by import By

from dcm.io.video import write_mp4
from dcm.pages.gallery import GalleryItem, RunSummary, render_gallery

EVIL_PROMPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
VIDEO_WAIT_SECONDS = 20
VIDEO_STATES_JS = (
    "return Array.from(document.querySelectorAll('video'))"
    ".map(v => [v.readyState, v.duration, v.error && v.error.code])"
)


def build_gallery(folder, tiny_wan):
    prompts = ["a red circle moving left", "a blue square moving up", EVIL_PROMPT]
    frames = tiny_wan.generate(prompts, seeds=[1, 2, 3])
    items = []
    for i, (prompt, video) in enumerate(zip(prompts, frames)):
        write_mp4(video, folder / f"v{i}.mp4", fps=8)
        params = {"frames": video.shape[0], "size": f"{video.shape[1]}x{video.shape[2]}"}
        items.append(
            GalleryItem(
                id=f"v{i}", prompt=prompt, seed=i + 1, status="ok", video_href=f"v{i}.mp4", params=params, seconds=0.1
            )
        )
    items.append(
        GalleryItem(
            id="bad",
            prompt="broken row",
            seed=0,
            status="error",
            error="num_frames must be 4*n + 1 (e.g. 17, 33, 81), got 10",
        )
    )
    items.append(GalleryItem(id="old", prompt="a green circle", seed=5, status="skipped", video_href="v0.mp4"))
    summary = RunSummary(
        title="Batch run <test>", model="tiny-wan", wall_seconds=2.0, num_ok=3, num_error=1, num_skipped=1
    )
    (folder / "index.html").write_text(render_gallery(items, summary), encoding="utf-8")
    return items


def visible_ids(browser):
    return [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]


def test_gallery_plays_filters_and_escapes(browser, static_server, tmp_path, tiny_wan, artifacts_dir):
    items = build_gallery(tmp_path, tiny_wan)
    browser.get(static_server(tmp_path) + "index.html")
    assert browser.title == "Batch run <test>"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card")) == len(items)

    # Every video element becomes playable with the right duration (17 frames at 8 fps = 2.125 s).
    deadline = time.time() + VIDEO_WAIT_SECONDS
    states = []
    while time.time() < deadline:
        states = browser.execute_script(VIDEO_STATES_JS)
        if states and all(s[0] >= 1 for s in states):
            break
        time.sleep(0.2)
    assert len(states) == 4  # three ok rows + the skipped row with its earlier video
    for ready, duration, error in states:
        assert error is None and ready >= 1
        assert duration == pytest.approx(17 / 8, abs=0.2)

    # The injected prompt is shown as text and never ran.
    assert browser.execute_script("return window.__pwned === undefined")
    assert EVIL_PROMPT in browser.find_element(By.CSS_SELECTOR, '[data-id="v2"] .prompt').text

    # Status filter and text search.
    browser.find_element(By.CSS_SELECTOR, 'button[data-status="error"]').click()
    assert visible_ids(browser) == ["bad"]
    assert "num_frames must be 4*n + 1" in browser.find_element(By.CSS_SELECTOR, '[data-id="bad"] .errmsg').text
    browser.find_element(By.CSS_SELECTOR, 'button[data-status="all"]').click()
    search = browser.find_element(By.ID, "search")
    search.send_keys("blue")
    assert visible_ids(browser) == ["v1"]
    search.clear()
    search.send_keys("nothing like this")
    assert visible_ids(browser) == [] and browser.find_element(By.ID, "empty").is_displayed()
    search.clear()  # clear() fires no input event: send one, as typing would
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    assert len(visible_ids(browser)) == len(items)
    browser.save_screenshot(os.path.join(artifacts_dir, "gallery.png"))


def test_gallery_status_is_validated():
    with pytest.raises(ValueError, match="status"):
        GalleryItem(id="x", prompt="p", seed=0, status="done")
