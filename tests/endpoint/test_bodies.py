"""Request bodies without Ray: the streamed size limit (chunked bodies too) and parsing that names the bad field.

.venv/bin/python -m pytest -q tests/endpoint/test_bodies.py
"""

import asyncio
import json

import httpx2
import pytest
from urllib3 import encode_multipart_formdata

from serve.bodies import BodyLimitMiddleware, parse_body
from serve.schemas import ApiError

LIMIT = 1024


def run_asgi(app, *, chunks: list[bytes], headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, dict, int]:
    """Drives an ASGI app with a streamed body: (status, JSON body, chunks the app pulled)."""
    pulled = 0
    sent = []

    async def receive():
        nonlocal pulled
        pulled += 1
        body = chunks[pulled - 1] if pulled <= len(chunks) else b""
        return {"type": "http.request", "body": body, "more_body": pulled < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


async def reading_app(scope, receive, send):
    """Reads the whole body, then answers 200 with its size (what a route handler does)."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_chunked_body_over_the_limit_is_cut_off_while_streaming():
    app = BodyLimitMiddleware(reading_app, max_bytes=LIMIT)
    chunks = [b"x" * 256] * 4096  # 1 MiB in 256-byte chunks, no Content-Length
    status, body, pulled = run_asgi(app, chunks=chunks)
    assert status == 413 and body["error"]["code"] == "request_too_large" and str(LIMIT) in body["error"]["message"]
    assert pulled == LIMIT // 256 + 1  # stopped at the first chunk past the limit, not after reading everything


def test_content_length_over_the_limit_is_refused_before_reading():
    app = BodyLimitMiddleware(reading_app, max_bytes=LIMIT)
    status, body, pulled = run_asgi(app, chunks=[b"x" * 10], headers=[(b"content-length", b"99999")])
    assert status == 413 and pulled == 0
    status, _, pulled = run_asgi(app, chunks=[b"x"], headers=[(b"content-length", b"-1")])
    assert status == 413 and pulled == 0


def test_bodies_within_the_limit_pass_through():
    app = BodyLimitMiddleware(reading_app, max_bytes=LIMIT)
    status, body, _ = run_asgi(app, chunks=[b"x" * 512, b"y" * 512])
    assert status == 200 and body == {"size": LIMIT}


def refused(body: bytes, content_type: str | None = "application/json") -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_body(body, content_type)
    return info.value


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"prompt": "p", "guidance_scale": NaN}', "guidance_scale"),
        (b'{"prompt": "p", "seed": Infinity}', "seed"),
        (b'{"prompt": "p", "num_frames": -Infinity}', "num_frames"),
        (b'{"prompt": "p", "seconds": 1e400}', "seconds"),
        (b'{"prompt": "p", "width": [1, {"a": 1e999}]}', "width"),
        (b'{"prompt": "p", "seed": 1' + b"0" * 5000 + b"}", "seed"),
    ],
)
def test_non_finite_and_huge_json_numbers_name_their_field(raw, field):
    err = refused(raw)
    assert err.status == 400 and err.detail.param == field and field in err.detail.message


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 100000])
def test_malformed_json_is_a_400(raw):
    err = refused(raw)
    assert err.status == 400 and err.detail.code == "invalid_json"


def test_json_is_the_default_and_keeps_types():
    assert parse_body(b'{"prompt": "p", "seed": 3, "seconds": "4"}', None) == {
        "prompt": "p",
        "seed": 3,
        "seconds": "4",
    }


def test_multipart_as_the_openai_sdk_sends_it():
    request = httpx2.Request("POST", "http://x/v1/videos", data={"prompt": "a red circle", "seconds": "4",
                                                                 "seed": "7", "guidance_scale": "1.5"},
                             files={})  # fmt: skip
    fields = parse_body(request.read(), request.headers["content-type"])
    assert fields == {"prompt": "a red circle", "seconds": "4", "seed": 7, "guidance_scale": 1.5}


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"prompt": "p", "seed": "x"}, "seed", "invalid_type"),
        ({"prompt": "p", "num_frames": "9.0"}, "num_frames", "invalid_type"),
        ({"prompt": "p", "guidance_scale": "nan"}, "guidance_scale", "invalid_type"),
        ({"prompt": "p", "guidance_scale": "inf"}, "guidance_scale", "invalid_type"),
        ({"prompt": "p", "input_reference": ("cat.png", b"\x89PNG", "image/png")}, "input_reference",
         "unsupported_parameter"),
        ({"prompt": b"\xff\xfe"}, "prompt", "invalid_value"),
    ],
)  # fmt: skip
def test_multipart_fields_are_checked_by_name(fields, param, code):
    body, content_type = encode_multipart_formdata(fields)
    err = refused(body, content_type)
    assert err.status == 400 and err.detail.param == param and err.detail.code == code


def test_repeated_and_broken_form_fields():
    body, content_type = encode_multipart_formdata([("prompt", "a"), ("prompt", "b")])
    assert refused(body, content_type).detail.param == "prompt"
    assert refused(b"--nothing here", "multipart/form-data; boundary=zzz").status == 400
    assert refused(b"prompt=a&prompt=b", "application/x-www-form-urlencoded").detail.param == "prompt"
    assert parse_body(b"prompt=a+b&seed=4", "application/x-www-form-urlencoded") == {"prompt": "a b", "seed": 4}
    assert refused(b"<xml/>", "application/xml").status == 415
