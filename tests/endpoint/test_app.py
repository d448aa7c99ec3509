"""The Serve application over real HTTP on 127.0.0.1: video bytes, stored videos on S3, batching, 422/401/503/413."""

import concurrent.futures
import json
import socket
import urllib.error
import urllib.request
import uuid

import boto3
import numpy as np
import pytest

from dcm.io.video import decode_mp4

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]

TOKEN = "test-token-123"
SMALL = {"num_frames": 9, "height": 32, "width": 32}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_cluster, s3_endpoint):
    from ray import serve

    from serve.app import VideoGen

    bucket = f"serve-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = {"model": "tiny-wan", "storage": f"s3://{bucket}/videos"}
    main = VideoGen.options(user_config={"max_batch_size": 4, "batch_wait_timeout_s": 0.5}).bind(settings)
    serve.run(main, name="main", route_prefix="/")
    secured = VideoGen.options(
        ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": {"DCM_API_TOKEN": TOKEN}}}
    ).bind(settings)
    serve.run(secured, name="secured", route_prefix="/secured")
    busy = VideoGen.options(
        max_ongoing_requests=1, max_queued_requests=1, ray_actor_options={"num_cpus": 0.25},
        user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
    ).bind(settings)  # fmt: skip
    serve.run(busy, name="busy", route_prefix="/busy")
    yield {"base": f"http://127.0.0.1:{port}", "bucket": bucket}
    serve.shutdown()


def call(url, body=None, headers=None, method=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                     method=method)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_mp4_of_the_asked_shape(server):
    status, headers, body = call(server["base"] + "/v1/videos", {"prompt": "a red circle", "seed": 1, **SMALL})
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert decode_mp4(body).frames.shape == (9, 32, 32, 3)
    status, _, body = call(server["base"] + "/v1/videos", {"prompt": "a red circle"})
    assert status == 200 and decode_mp4(body).frames.shape == (17, 64, 64, 3)  # the model's defaults


def test_url_response_stores_on_s3_and_fetches_back(server):
    status, _, body = call(server["base"] + "/v1/videos", {"prompt": "a blue square", "seed": 3, "response": "url"})
    assert status == 200
    stored = json.loads(body)
    assert stored["uri"] == f"s3://{server['bucket']}/videos/{stored['id']}.mp4" and stored["seed"] == 3
    obj = boto3.client("s3").get_object(Bucket=server["bucket"], Key=f"videos/{stored['id']}.mp4")["Body"].read()
    status, headers, fetched = call(stored["url"])
    assert status == 200 and fetched == obj and decode_mp4(fetched).frames.shape[0] == stored["num_frames"]
    assert call(server["base"] + "/v1/videos/does-not-exist")[0] == 404
    assert call(server["base"] + "/v1/videos/..%2F..%2Fetc")[0] == 404


def test_concurrent_requests_are_batched_and_match_unbatched(server):
    bodies = [{"prompt": f"a red circle number {i}", "seed": 10 + i, **SMALL} for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(lambda b: call(server["base"] + "/v1/videos", b), bodies))
    sizes = [int(h["x-dcm-batch-size"]) for _, h, _ in batched]
    assert all(s == 200 for s, _, _ in batched) and max(sizes) > 1, sizes
    for body, (_, _, mp4) in zip(bodies, batched):
        status, headers, alone = call(server["base"] + "/v1/videos", body)
        assert status == 200 and headers["x-dcm-batch-size"] == "1"
        diff = np.abs(decode_mp4(alone).frames.astype(int) - decode_mp4(mp4).frames.astype(int))
        assert diff.max() <= 2  # same video up to 1-level rounding differences re-encoded


@pytest.mark.parametrize(
    "body, field, text",
    [
        ({"prompt": "p", "num_frames": 10}, "num_frames", "num_frames must be 4*n + 1"),
        ({"prompt": "p", "height": 40}, "height", "height must be a multiple of 16, got 40"),
        ({"prompt": "p", "num_inference_steps": 99}, "num_inference_steps", "in [1, 8], got 99"),
        ({"prompt": ""}, "prompt", "prompt must be a non-empty string"),
        ({"prompt": "p", "seed": "x"}, "seed", "valid integer"),
        ({"prompt": "p", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": "p", "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({}, "prompt", "Field required"),
    ],
)
def test_invalid_fields_give_422_naming_the_field(server, body, field, text):
    status, _, raw = call(server["base"] + "/v1/videos", body)
    assert status == 422
    detail = json.loads(raw)["detail"]
    assert any(d["loc"][-1] == field and text in d["msg"] for d in detail), detail
    assert b"Traceback" not in raw


def test_server_survives_garbage_and_limits_bodies(server):
    assert call(server["base"] + "/v1/videos", raw=b"{not json")[0] == 422
    assert call(server["base"] + "/v1/videos", raw=b'{"prompt": "' + b"x" * 20000 + b'"}')[0] == 413
    status, _, body = call(server["base"] + "/v1/videos", {"prompt": "still alive", **SMALL})
    assert status == 200 and decode_mp4(body).frames.shape[0] == 9


def test_bearer_token(server):
    url = server["base"] + "/secured/v1/videos"
    assert call(url, {"prompt": "p", **SMALL})[0] == 401
    assert call(url, {"prompt": "p", **SMALL}, {"Authorization": "Bearer wrong"})[0] == 401
    status, _, body = call(url, {"prompt": "p", **SMALL}, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and decode_mp4(body).frames.shape[0] == 9
    assert call(server["base"] + "/secured/healthz")[0] == 200  # health needs no token


def test_over_the_queue_bound_clients_get_503_with_retry_after(server):
    body = {"prompt": "a busy server", **SMALL}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda i: call(server["base"] + "/busy/v1/videos", {**body, "seed": i}), range(12)))
    statuses = [s for s, _, _ in responses]
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}
    assert all("retry-after" in h for s, h, _ in responses if s == 503)


def test_health_readiness_docs_and_playground(server):
    assert json.loads(call(server["base"] + "/healthz")[2]) == {"status": "ok"}
    ready = json.loads(call(server["base"] + "/readyz")[2])
    assert ready == {"status": "ready", "model": "tiny-wan"}
    status, _, spec = call(server["base"] + "/openapi.json")
    assert status == 200 and "/v1/videos" in json.loads(spec)["paths"]
    status, headers, page = call(server["base"] + "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"Generate" in page


def test_playground_generates_and_explains_errors(server, browser, artifacts_dir):
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server["base"] + "/")
    form = {name: browser.find_element(By.ID, name) for name in ("prompt", "num_frames", "height", "width")}
    for name, value in (("num_frames", "9"), ("height", "32"), ("width", "32")):
        form[name].clear()
        form[name].send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results video"))
    wait.until(
        lambda b: b.execute_script("const v = document.querySelector('#results video'); return v.readyState >= 1")
    )
    duration = browser.execute_script("return document.querySelector('#results video').duration")
    assert duration == pytest.approx(9 / 8, abs=0.2)
    assert "Done in" in browser.find_element(By.ID, "message").text

    form["num_frames"].clear()
    form["num_frames"].send_keys("10")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: "Invalid input" in b.find_element(By.ID, "message").text)
    message = browser.find_element(By.ID, "message").text
    assert "num_frames" in message and "4*n + 1" in message
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results video")) == 1  # the failed request added nothing
    browser.save_screenshot(os.path.join(artifacts_dir, "playground.png"))
