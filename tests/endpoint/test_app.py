"""The Serve application over real HTTP on 127.0.0.1, spoken to with the official ``openai`` SDK and raw HTTP.

    .venv/bin/python -m pytest -q tests/endpoint/test_app.py

One application for the module (tiny-wan, jobs on the moto S3 server, bearer auth on, a short lease): jobs created,
polled, listed, downloaded and deleted through ``client.videos``; errors as the SDK's typed exceptions with ``param``;
8 jobs in one batch; the queue bound; body limits (chunked too) and a fuzz of a few hundred bodies; the offline
``/docs`` page and the playground in headless Chromium; last, a replica killed mid-job.
"""

import concurrent.futures
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import boto3
import psutil
import pytest
from urllib3 import encode_multipart_formdata

from dcm.io.video import decode_mp4

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]

TOKEN = "test-token-123"
APP = "endpoint-main"
SMALL = {"num_frames": 9, "height": 32, "width": 32}
# A short lease so a killed replica's job is taken up within seconds.
LEASE_S = 3.0
SWEEP_S = 1.0
MAX_JOBS = 8
# Generous: generation on a shared 2-core machine is slow and a replica restart loads the model again.
JOB_TIMEOUT_S = 240


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
    settings = {
        "model": "tiny-wan",
        "storage": f"s3://{bucket}/store",
        "jobs": {"max_jobs": MAX_JOBS, "lease_s": LEASE_S, "sweep_interval_s": SWEEP_S},
    }
    options = {"num_cpus": 0.5, "runtime_env": {"env_vars": {"DCM_API_TOKEN": TOKEN}}}
    app = VideoGen.options(user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.3}, ray_actor_options=options)
    serve.run(app.bind(settings), name=APP, route_prefix="/")
    yield {"base": f"http://127.0.0.1:{port}", "port": port, "bucket": bucket, "settings": settings,
           "options": options}  # fmt: skip
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["base"] + "/v1", api_key=TOKEN, max_retries=0, timeout=60)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(url, body=None, headers=None, method=None, raw=None, content_type="application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type, **(headers or {})},
                                     method=method)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def wait_done(client, video_id, timeout=JOB_TIMEOUT_S):
    """Polls until the job is completed or failed (tolerating 503s while a replica restarts)."""
    from openai import InternalServerError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            video = client.videos.retrieve(video_id)
        except InternalServerError:
            video = None
        if video is not None and video.status in ("completed", "failed"):
            return video
        time.sleep(0.2)
    raise AssertionError(f"{video_id} not done after {timeout} s")


def test_create_and_poll_then_download_the_asked_frames_and_size(server, client):
    video = client.videos.create_and_poll(prompt="a red circle", model="tiny-wan", seconds="1", size="32x32",
                                          extra_body={"seed": 3})  # fmt: skip
    assert (video.status, video.progress, video.size, video.seconds, video.model) == (
        "completed", 100, "32x32", "1.125", "tiny-wan")  # fmt: skip
    assert video.seed == 3 and video.num_frames == 9 and video.completed_at >= video.created_at
    mp4 = client.videos.download_content(video.id).read()
    assert decode_mp4(mp4).frames.shape == (9, 32, 32, 3)  # 1 s at the model's 8 fps -> 9 frames (4n + 1)
    stored = boto3.client("s3").get_object(Bucket=server["bucket"], Key=f"store/videos/{video.id}.mp4")
    assert stored["Body"].read() == mp4  # the job's video lives in the configured storage


def test_retrieve_list_pages_and_delete(client):
    from openai import NotFoundError

    ids = [client.videos.create(prompt=f"a blue square {i}", extra_body={"seed": i, **SMALL}).id for i in range(3)]
    assert client.videos.retrieve(ids[0]).status in ("queued", "in_progress", "completed")
    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more  # newest first
    second = client.videos.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    walked = [v.id for v in client.videos.list(limit=2)]  # the SDK pages on last_id by itself
    assert walked[:3] == ids[::-1] and len(walked) == len(set(walked))
    assert [v.id for v in client.videos.list(order="asc", after=ids[0], limit=5)][:2] == ids[1:]
    deleted = client.videos.delete(ids[1])
    assert deleted.deleted and deleted.id == ids[1] and deleted.object == "video.deleted"
    with pytest.raises(NotFoundError):
        client.videos.retrieve(ids[1])
    with pytest.raises(NotFoundError):
        client.videos.download_content(ids[1])
    assert ids[1] not in [v.id for v in client.videos.list(limit=100)]
    for video_id in (ids[0], ids[2]):
        assert wait_done(client, video_id).status == "completed"


def test_content_before_completion_is_a_409_not_retried(server, client):
    from openai import ConflictError

    video = client.videos.create(prompt="a slow green triangle", extra_body={"num_frames": 33, "height": 64,
                                                                            "width": 64})  # fmt: skip
    with pytest.raises(ConflictError) as info:
        client.videos.download_content(video.id)
    assert info.value.code == "video_not_ready" and video.id in info.value.message
    assert wait_done(client, video.id).status == "completed"


@pytest.mark.parametrize(
    "kwargs, error, param, text",
    [
        ({"extra_body": {"seed": "x"}}, "BadRequestError", "seed", "integer"),
        ({"extra_body": {"colour": "red"}}, "BadRequestError", "colour", "unknown field"),
        ({"model": "sora-2"}, "BadRequestError", "model", "serves model 'tiny-wan'"),
        ({"size": "wide"}, "BadRequestError", "size", "WIDTHxHEIGHT"),
        ({"extra_body": {"num_frames": 10}}, "UnprocessableEntityError", "num_frames", "4*n + 1"),
        ({"size": "1280x720"}, "UnprocessableEntityError", "size", "multiple of 16 from 16 to 512"),
        ({"seconds": "60"}, "UnprocessableEntityError", "seconds", "at most 125 frames"),
        ({"extra_body": {"num_inference_steps": 99}}, "UnprocessableEntityError", "num_inference_steps", "99"),
    ],
)
def test_bad_fields_raise_the_sdks_typed_errors_with_param(client, kwargs, error, param, text):
    import openai

    with pytest.raises(getattr(openai, error)) as info:
        client.videos.create(prompt="a red circle", **kwargs)
    assert info.value.param == param and text in info.value.message, info.value.body
    assert info.value.body["type"] == "invalid_request_error"


def test_auth_unknown_ids_and_auth_before_validation(server, client):
    from openai import AuthenticationError, NotFoundError, OpenAI

    stranger = OpenAI(base_url=server["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(AuthenticationError):
        stranger.videos.create(prompt="a red circle")
    with pytest.raises(AuthenticationError):
        stranger.videos.list()
    for video_id in ("video_0123456789abcdef0123456789abcdef", "not-an-id", "..%2F..%2Fetc"):
        with pytest.raises(NotFoundError):
            client.videos.retrieve(video_id)
    # An unauthenticated bad body learns nothing about the schema: 401 first.
    status, headers, body = call(server["base"] + "/v1/videos", raw=b'{"prompt": NaN')
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key" and headers["www-authenticate"]
    assert call(server["base"] + "/v1/videos?limit=abc")[0] == 401
    assert call(server["base"] + "/v1/videos?limit=abc", headers=AUTH)[0] == 400
    assert call(server["base"] + "/healthz")[0] == 200  # health needs no token


@pytest.mark.parametrize(
    "raw, param",
    [
        (b'{"prompt": "p", "guidance_scale": NaN}', "guidance_scale"),
        (b'{"prompt": "p", "seed": 1e400}', "seed"),
        (b'{"prompt": "p", "num_frames": Infinity}', "num_frames"),
    ],
)
def test_non_finite_numbers_are_a_400_naming_the_field(server, raw, param):
    status, headers, body = call(server["base"] + "/v1/videos", raw=raw, headers=AUTH)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["param"] == param


def test_eight_jobs_at_once_are_batched(client):
    bodies = [{"prompt": f"a red circle number {i}", "extra_body": {"seed": 10 + i, **SMALL}} for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda b: client.videos.create(**b), bodies))
    done = [wait_done(client, video.id) for video in created]
    assert all(v.status == "completed" and v.attempts == 1 for v in done)
    assert max(v.batch_size for v in done) > 1, [v.batch_size for v in done]


def test_a_lone_job_skips_the_batch_wait(client):
    # The server batches with a 0.3 s wait; a job the replica holds alone has nothing to wait for.
    wait_s = 0.3
    created = client.videos.create(prompt="a lone green square", extra_body={"seed": 77, **SMALL})
    done = wait_done(client, created.id)
    assert done.status == "completed" and done.batch_size == 1
    assert done.queue_seconds < wait_s, done.queue_seconds


def test_progress_moves_while_the_poll_header_says_when_to_ask(server):
    status, headers, body = call(server["base"] + "/v1/videos", {"prompt": "a long purple circle",
                                 "num_frames": 65, "height": 128, "width": 128}, headers=AUTH)  # fmt: skip
    assert status == 200 and int(headers["openai-poll-after-ms"]) >= 10
    job = json.loads(body)
    assert (job["status"], job["progress"], job["object"]) == ("queued", 0, "video")
    seen = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        status, headers, body = call(server["base"] + f"/v1/videos/{job['id']}", headers=AUTH)
        job = json.loads(body)
        seen.append((job["status"], job["progress"], headers.get("openai-poll-after-ms")))
    assert job["status"] == "completed" and job["progress"] == 100
    assert all(hint is not None for s, _, hint in seen if s != "completed")  # a hint on every pending answer
    assert [p for _, p, _ in seen] == sorted(p for _, p, _ in seen)  # never backwards
    assert any(s == "in_progress" for s, _, _ in seen), seen


def test_the_sync_endpoint_answers_an_mp4(server):
    status, headers, body = call(server["base"] + "/v1/videos/sync", {"prompt": "a red circle", "seed": 1, **SMALL},
                                 headers=AUTH)  # fmt: skip
    assert status == 200 and headers["content-type"] == "video/mp4" and headers["x-dcm-size"] == "32x32"
    assert decode_mp4(body).frames.shape == (9, 32, 32, 3)
    fields, content_type = encode_multipart_formdata({"prompt": "a red circle", "size": "32x32", "seconds": "1"})
    status, _, body = call(server["base"] + "/v1/videos/sync", raw=fields, headers=AUTH, content_type=content_type)
    assert status == 200 and decode_mp4(body).frames.shape == (9, 32, 32, 3)


def test_a_full_queue_answers_503_with_retry_after(server, client):
    body = {"prompt": "a busy server", **SMALL}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: call(server["base"] + "/v1/videos", {**body, "seed": i}, headers=AUTH),
                                range(12)))  # fmt: skip
    statuses = [s for s, _, _ in answers]
    assert statuses.count(200) >= 1 and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for status, headers, raw in answers:
        if status == 503:
            assert headers["retry-after"] and json.loads(raw)["error"]["code"] == "server_busy"
    for status, _, raw in answers:
        if status == 200:
            assert wait_done(client, json.loads(raw)["id"]).status == "completed"


def replica_pid(app: str) -> int:
    """The pid of the application's (single) replica process, from its process title."""
    title = f"ray::ServeReplica:{app}:VideoGen"
    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith(title)]
    assert len(pids) == 1, pids
    return pids[0]


# Replica growth allowed on an oversized chunked body: the raw bytes Ray forwarded (with allocator overhead), plus a
# margin for the replica's own allocations; a body parsed as JSON costs about 2.7x its size.
RAW_BODY_FACTOR = 1.3
BODY_SLACK_MB = 16


def send_chunked(port: int, path: str, total_bytes: int, chunk_bytes: int = 64 * 1024) -> tuple[int, int]:
    """POSTs up to ``total_bytes`` with chunked transfer encoding (no Content-Length), stopping once the server
    answers; returns the response status and the body bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    answer = bytearray()

    def read() -> None:
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                return
            answer.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    try:
        sock.sendall(head.encode())
        chunk = b"%x\r\n" % chunk_bytes + b" " * chunk_bytes + b"\r\n"
        for _ in range(total_bytes // chunk_bytes):
            if answer:
                break  # the server answered: stop sending
            sock.sendall(chunk)
            sent += chunk_bytes
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the server closed the connection after answering
        pass
    reader.join(timeout=60)
    sock.close()
    return int(bytes(answer).split(b" ", 2)[1]), sent


def test_body_limit_holds_for_declared_and_chunked_bodies(server):
    status, _, body = call(server["base"] + "/v1/videos", raw=b'{"prompt": "' + b"x" * 20000 + b'"}', headers=AUTH)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    replica = psutil.Process(replica_pid(APP))
    before = replica.memory_info().rss
    status, sent = send_chunked(server["port"], "/v1/videos", 64 * 1024 * 1024)
    assert status == 413
    # Ray's replica queues every body message the proxy forwards until the client stops (upstream, unbounded), so
    # the replica may hold the raw bytes sent before the 413 reached the client; parsing them cost 2.7x that.
    grown_mb, sent_mb = (replica.memory_info().rss - before) / 2**20, sent / 2**20
    assert grown_mb < RAW_BODY_FACTOR * sent_mb + BODY_SLACK_MB, f"grew {grown_mb:.0f} MB for {sent_mb:.0f} MB sent"
    status, _, body = call(server["base"] + "/v1/videos/sync", {"prompt": "still alive", **SMALL}, headers=AUTH)
    assert status == 200 and decode_mp4(body).frames.shape[0] == 9


FIELDS = ["prompt", "model", "seconds", "size", "seed", "negative_prompt", "num_inference_steps", "num_frames",
          "height", "width", "fps", "guidance_scale", "input_reference", "colour", "\u00e9t\u00e9", ""]  # fmt: skip
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400]


def fuzz_value(rng: random.Random):
    kinds = [
        lambda: rng.choice([0, 1, -1, 9, 16, 32, 2**31, 2**63, -(2**63), 10**30]),
        lambda: rng.uniform(-1e6, 1e6),
        lambda: rng.choice([True, False, None, [], {}, [1, 2], {"a": [None]}]),
        lambda: "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x2FFF), 0x1F600, 0]))
            for _ in range(rng.choice([0, 1, 5, 40, 3000]))
        ),  # fmt: skip
        lambda: rng.choice(["4", "0", "-3", "1.5", "1e9", "nan", "64x64", "32X48", "0x0", "99999x1", "x", "tiny-wan"]),
    ]
    return rng.choice(kinds)()


def fuzz_body(rng: random.Random) -> tuple[bytes, str, str | None]:
    """(body, content type, the field made suspect) from a valid base body with one field changed or dropped."""
    fields = {"prompt": "a red circle", **SMALL}
    field = rng.choice(FIELDS)
    encoding = rng.choices(["json", "raw", "multipart", "form"], weights=[5, 1, 2, 1])[0]
    if encoding == "raw":  # a number JSON cannot represent in Python, as raw text
        text = json.dumps(fields)[:-1] + f", {json.dumps(field)}: {rng.choice(RAW_NUMBERS)}}}"
        return text.encode(), "application/json", field
    if rng.random() < 0.1 and field in fields:
        del fields[field]
    else:
        fields[field] = fuzz_value(rng)
    if encoding == "json":
        return json.dumps(fields).encode(), "application/json", field
    text_fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items() if v is not None}
    if encoding == "multipart":
        return (*encode_multipart_formdata(text_fields), field)
    from urllib.parse import urlencode

    return urlencode(text_fields).encode(), "application/x-www-form-urlencoded", field


def test_fuzzed_bodies_never_give_5xx_and_refusals_name_their_field(server, client):
    rng = random.Random(20261201)
    outcomes = {}
    for _ in range(300):
        raw, content_type, field = fuzz_body(rng)
        status, headers, body = call(server["base"] + "/v1/videos", raw=raw, headers=AUTH, content_type=content_type)
        outcomes[status] = outcomes.get(status, 0) + 1
        assert status < 500, (status, raw[:200], body[:300])
        if status == 200:  # the change happened to be valid: a job; drop it before it runs
            client.videos.delete(json.loads(body)["id"])
            continue
        error = json.loads(body)["error"]
        assert error["message"] and error["type"]
        if status in (400, 422):
            assert error["param"] == field, (field, raw[:200], error)  # the base body is valid: only it can be wrong
        else:
            assert status == 413 and error["code"] == "request_too_large", (status, error)
    assert outcomes.get(400, 0) > 50 and outcomes.get(422, 0) > 10 and outcomes.get(200, 0) > 5, outcomes


def test_health_readiness_and_openapi(server):
    assert json.loads(call(server["base"] + "/healthz")[2]) == {"status": "ok"}
    ready = json.loads(call(server["base"] + "/readyz")[2])
    assert ready["status"] == "ready" and ready["model"] == "tiny-wan" and ready["max_jobs"] == MAX_JOBS
    status, _, spec = call(server["base"] + "/openapi.json")
    paths = json.loads(spec)["paths"]
    assert status == 200 and {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content"} <= set(paths)
    body = paths["/v1/videos"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)


def test_docs_page_renders_with_no_asset_from_the_internet(server, browser, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server["base"] + "/docs")
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    operations = {(e.get_attribute("data-method"), e.get_attribute("data-path"))
                  for e in browser.find_elements(By.CSS_SELECTOR, ".op[data-path]")}  # fmt: skip
    assert {
        ("post", "/v1/videos"),
        ("get", "/v1/videos/{video_id}"),
        ("delete", "/v1/videos/{video_id}"),
    } <= operations
    assert "seconds" in browser.find_element(By.ID, "operations").text
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server["base"]) for url in resources), resources
    browser.save_screenshot(f"{artifacts_dir}/api-docs.png")


def test_playground_shows_progress_then_plays_and_explains_errors(server, browser, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server["base"] + "/")
    form = {name: browser.find_element(By.ID, name) for name in ("prompt", "num_frames", "height", "width", "token")}
    for name, value in (("num_frames", "9"), ("height", "32"), ("width", "32"), ("token", TOKEN)):
        form[name].clear()
        form[name].send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait = WebDriverWait(browser, JOB_TIMEOUT_S)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results video"))
    wait.until(lambda b: b.execute_script("return document.querySelector('#results video').readyState >= 1"))
    duration = browser.execute_script("return document.querySelector('#results video').duration")
    assert duration == pytest.approx(9 / 8, abs=0.2)
    assert "Done in" in browser.find_element(By.ID, "message").text
    history = browser.find_element(By.CSS_SELECTOR, "#results .result").get_attribute("data-history").split(",")
    assert history[0] == "queued 0" and history[-1] == "completed 100", history
    progress = [int(entry.split()[1]) for entry in history]
    assert progress == sorted(progress)

    form["num_frames"].clear()
    form["num_frames"].send_keys("10")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: "Invalid input" in b.find_element(By.ID, "message").text)
    message = browser.find_element(By.ID, "message").text
    assert "num_frames" in message and "4*n + 1" in message
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == 1  # the refused job added nothing
    browser.save_screenshot(f"{artifacts_dir}/playground.png")


def test_held_jobs_scale_the_deployment_up_though_no_request_is_ongoing(server):
    """Serve's default policy counts ongoing HTTP requests: after the creates have answered there are none, yet the
    jobs-held policy asks for a second replica."""
    from ray import serve

    from serve.app import VideoGen

    autoscaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0,
                   "metrics_interval_s": 0.5, "look_back_period_s": 1,
                   "policy": {"policy_function": "serve.autoscaling:held_jobs_policy"}}  # fmt: skip
    app = VideoGen.options(autoscaling_config=autoscaling, ray_actor_options=server["options"],
                           user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0})  # fmt: skip
    serve.run(app.bind(server["settings"]), name="endpoint-scaled", route_prefix="/scaled")
    big = {"prompt": "a crowd of circles", "num_frames": 65, "height": 128, "width": 128}
    ids = []
    for seed in range(5):
        status, _, body = call(server["base"] + "/scaled/v1/videos", {**big, "seed": seed}, headers=AUTH)
        assert status == 200
        ids.append(json.loads(body)["id"])
    deadline = time.monotonic() + JOB_TIMEOUT_S
    replicas = 1
    while replicas < 2:
        assert time.monotonic() < deadline, "the deployment did not scale up for its held jobs"
        time.sleep(0.5)
        replicas = sum(serve.status().applications["endpoint-scaled"].deployments["VideoGen"].replica_states.values())
    for video_id in ids:  # nothing left for other replicas to take up
        assert call(server["base"] + f"/v1/videos/{video_id}", headers=AUTH, method="DELETE")[0] == 200
    serve.delete("endpoint-scaled")


def test_a_killed_replicas_jobs_complete_on_another_replica_within_the_bound(server, client):
    """A second application shares the storage; its replica dies mid-job; the jobs complete (taken up by a
    replica of either application) with ``attempts`` > 1, polled through the first application."""
    import ray
    from openai import OpenAI
    from ray import serve

    from serve.app import VideoGen

    app = VideoGen.options(user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                           ray_actor_options=server["options"])  # fmt: skip
    serve.run(app.bind(server["settings"]), name="endpoint-doomed", route_prefix="/doomed")
    doomed = OpenAI(base_url=server["base"] + "/doomed/v1", api_key=TOKEN, max_retries=0)
    ids = [doomed.videos.create(prompt=f"a doomed circle {i}", extra_body={"num_frames": 65, "height": 128,
                                "width": 128, "seed": i}).id for i in range(3)]  # fmt: skip
    deadline = time.monotonic() + JOB_TIMEOUT_S
    generating = []
    while not generating:  # one at a time (batches of 1): kill the replica while one is generating
        assert time.monotonic() < deadline
        generating = [i for i in ids if client.videos.retrieve(i).status == "in_progress"]
        time.sleep(0.05)
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::endpoint-doomed#")]  # fmt: skip
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    pending_at_kill = [i for i in ids if client.videos.retrieve(i).status != "completed"]
    assert generating[0] in pending_at_kill, "the job finished before the kill; make the jobs larger"
    taken_up = {}
    while len(taken_up) < len(pending_at_kill):  # polled through the other application
        assert time.monotonic() - killed_at < JOB_TIMEOUT_S, taken_up
        for video_id in pending_at_kill:
            if video_id not in taken_up and client.videos.retrieve(video_id).attempts >= 2:
                taken_up[video_id] = time.monotonic() - killed_at
        time.sleep(0.1)
    # The lease lapses at most LEASE_S after the kill; the next poll or sweep takes the job up (slack: S3 calls).
    assert max(taken_up.values()) < LEASE_S + SWEEP_S + 5, taken_up
    for video_id in pending_at_kill:
        video = wait_done(client, video_id)
        assert video.status == "completed" and video.attempts >= 2, video
        assert decode_mp4(client.videos.download_content(video_id).read()).frames.shape == (65, 128, 128, 3)
    serve.delete("endpoint-doomed")
