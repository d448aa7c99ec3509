"""The gallery of a real batch run in headless Chromium: videos play, filters work, prompts cannot inject markup."""

import os
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from selenium.webdriver.common.by import By

from dcm.cluster.batch import BatchConfig, run_batch
from dcm.manifest import JobDefaults
from dcm.pages.gallery import GalleryItem

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
    summary = run_batch(BatchConfig(manifest=str(tmp_path / "m.parquet"), output=str(out), defaults=defaults),
                        progress=False)  # fmt: skip
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
        assert duration == pytest.approx(17 / 8, abs=0.2)  # 17 frames at the model's 8 fps

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
