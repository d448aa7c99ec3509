"""The gallery of a real batch run in headless Chromium: videos play, filters work, prompts cannot inject markup;
a large output's gallery is pages of a fixed size with the output's counts and links between them."""

import os
import time
from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from selenium.webdriver.common.by import By

from dcm.cluster.batch import BatchConfig, run_batch
from dcm.manifest import JobDefaults
from dcm.pages.gallery import GalleryItem, Page, page_name

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EVIL_PROMPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
VIDEO_WAIT_SECONDS = 30
VIDEO_STATES_JS = (
    "return Array.from(document.querySelectorAll('video'))"
    ".map(v => [v.readyState, v.duration, v.error && v.error.code])"
)
ROWS = [
    {"id": "red", "prompt": "a red circle moving left"},
    {"id": "blue", "prompt": "a blue square moving up"},
    {"id": "evil", "prompt": EVIL_PROMPT},
    {"id": "bad", "prompt": "broken row", "num_frames": 10},
]


def visible_ids(browser):
    return [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]


def test_gallery_of_a_batch_run(ray_cluster, browser, static_server, tmp_path, artifacts_dir):
    frame = pd.DataFrame(ROWS)
    frame["num_frames"] = frame["num_frames"].astype("Int64")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "m.parquet")
    out = tmp_path / "run"
    defaults = JobDefaults(num_frames=17, height=32, width=32)
    summary = run_batch(BatchConfig(manifest=str(tmp_path / "m.parquet"), output=str(out), defaults=defaults,
                                    model="tiny-wan"), progress=False)  # fmt: skip
    assert summary.gallery_uri == str((out / "index.html").resolve())

    browser.get(static_server(out) + "index.html")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card")) == 4
    deadline, states = time.time() + VIDEO_WAIT_SECONDS, []
    while time.time() < deadline:
        states = browser.execute_script(VIDEO_STATES_JS)
        if states and all(s[0] >= 1 for s in states):
            break
        time.sleep(0.2)
    assert len(states) == 3  # the error row has no video
    for ready, duration, error in states:
        assert error is None and ready >= 1
        assert duration == pytest.approx(17 / 8, abs=0.2)  # 17 frames at tiny-wan's 8 fps

    assert browser.execute_script("return window.__pwned === undefined")  # the prompt never ran
    assert EVIL_PROMPT in browser.find_element(By.CSS_SELECTOR, '[data-id="evil"] .prompt').text

    browser.find_element(By.CSS_SELECTOR, 'button[data-status="error"]').click()
    assert visible_ids(browser) == ["bad"]
    assert "num_frames must be 4*n + 1" in browser.find_element(By.CSS_SELECTOR, '[data-id="bad"] .errmsg').text
    browser.find_element(By.CSS_SELECTOR, 'button[data-status="all"]').click()
    search = browser.find_element(By.ID, "search")
    search.send_keys("blue")
    assert visible_ids(browser) == ["blue"]
    search.clear()
    search.send_keys("nothing like this")
    assert visible_ids(browser) == [] and browser.find_element(By.ID, "empty").is_displayed()
    search.clear()  # clear() fires no input event: send one, as typing would
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    assert len(visible_ids(browser)) == 4
    browser.save_screenshot(os.path.join(artifacts_dir, "gallery.png"))


def test_gallery_status_is_validated():
    with pytest.raises(ValueError, match="status"):
        GalleryItem(id="x", prompt="p", seed=0, status="done")


PAGE_SIZE = 200


def cards(browser):
    return browser.find_elements(By.CSS_SELECTOR, ".card")


def test_large_output_gallery_is_paged(browser, static_server, tmp_path):
    """450 rows (invalid ones: no model is needed) -> pages of 200 with the whole output's counts and navigation;
    a page cap leaves the rest to results.parquet and says so."""
    num_rows = 450
    numbers = range(num_rows)
    frame = pd.DataFrame({"id": [f"r{i:03d}" for i in numbers], "prompt": [f"prompt {i}" for i in numbers],
                          "num_frames": [10] * num_rows})  # fmt: skip
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "m.parquet")
    out = tmp_path / "run"
    config = BatchConfig(manifest=str(tmp_path / "m.parquet"), output=str(out), model="tiny-wan",
                         gallery_page_size=PAGE_SIZE)  # fmt: skip
    run_batch(config, progress=False)
    assert sorted(p.name for p in out.glob("index*.html")) == ["index-2.html", "index-3.html", "index.html"]

    base = static_server(out)
    browser.get(base + "index.html")
    assert len(cards(browser)) == PAGE_SIZE
    totals = browser.find_element(By.ID, "output-totals").text
    assert f"this output: {num_rows} rows" in totals and f"{num_rows} error" in totals
    nav = browser.find_element(By.CSS_SELECTOR, "nav.pages").text
    assert "page 1 of 3" in nav and f"rows 1–200 of {num_rows}" in nav
    browser.find_element(By.CSS_SELECTOR, 'nav.pages a[rel="next"]').click()
    assert browser.current_url.endswith("index-2.html") and len(cards(browser)) == PAGE_SIZE
    assert cards(browser)[0].get_attribute("data-id") == "r200"  # errors first, by id: r000 .. r449
    browser.find_element(By.CSS_SELECTOR, 'nav.pages a[data-page="3"]').click()
    assert len(cards(browser)) == num_rows - 2 * PAGE_SIZE
    assert "page 3 of 3" in browser.find_element(By.CSS_SELECTOR, "nav.pages").text
    browser.find_element(By.CSS_SELECTOR, 'nav.pages a[href="results.parquet"]')  # all rows, for what pages omit

    capped = replace(config, gallery_max_pages=1)
    run_batch(capped, progress=False)
    browser.get(base + "index.html")
    nav = browser.find_element(By.CSS_SELECTOR, "nav.pages").text
    assert "page 1 of 1" in nav and f"these pages show the first {PAGE_SIZE}" in nav


def test_gallery_pages_are_named_and_validated():
    assert [page_name(n) for n in (1, 2, 10)] == ["index.html", "index-2.html", "index-10.html"]
    with pytest.raises(ValueError, match="page number"):
        Page(number=3, count=2, first_row=0, num_rows=10)
