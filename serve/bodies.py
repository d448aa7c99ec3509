"""Request bodies: the size limit, enforced on the stream, and parsing JSON, form and multipart bodies into fields.

The limit is an ASGI middleware counting bytes as they arrive, so a chunked body (no ``Content-Length``) is cut off
at the limit instead of read whole. Parsing never trusts the body: a JSON ``NaN``, ``Infinity`` or ``1e400``, a
number too long to convert, a file where a field belongs or a repeated field is refused naming the field.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.schemas import FLOAT_FIELDS, INT_FIELDS, ApiError

# Integers longer than this are refused while parsing (Python refuses int() of more than 4300 digits; no field
# needs more than 19).
MAX_INT_DIGITS = 40
_INT_TEXT = re.compile(r"[+-]?\d+")


class BodyTooLarge(Exception):
    """Raised from ``receive`` once more than the limit has arrived."""


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"request body must be at most {max_bytes} bytes", code="request_too_large")


async def _send_error(send: Send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: 413 for a body over ``max_bytes``, by ``Content-Length`` or by counting streamed bytes."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _send_error(send, _too_large(self.max_bytes))
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:  # too late for a 413: the response is under way
                raise
            await _send_error(send, _too_large(self.max_bytes))


# -- parsing ----------------------------------------------------------------------------------------------------


class _Unrepresentable:
    """A JSON number we refuse: non-finite (``NaN``, ``Infinity``, ``1e400``) or too long."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason


def _parse_float(text: str) -> float | _Unrepresentable:
    value = float(text)
    return value if math.isfinite(value) else _Unrepresentable(text, "is not a finite number")


def _parse_int(text: str) -> int | _Unrepresentable:
    digits = len(text.lstrip("+-"))
    if digits > MAX_INT_DIGITS:
        return _Unrepresentable(f"{text[:12]}...", f"has {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _find_unrepresentable(value: Any, path: str) -> tuple[str, _Unrepresentable] | None:
    if isinstance(value, _Unrepresentable):
        return path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _find_unrepresentable(child, f"{path}.{key}")
        if found is not None:
            return found
    return None


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object's fields. Raises ApiError(400) for invalid JSON, non-objects and refused numbers."""
    try:
        data = json.loads(
            body,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=lambda text: _Unrepresentable(text, "is not a finite number"),
        )
    except (ValueError, RecursionError) as err:  # JSONDecodeError and undecodable bytes are ValueErrors
        raise ApiError(400, f"the body is not valid JSON: {err}", code="invalid_json") from err
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    for key, value in data.items():
        found = _find_unrepresentable(value, key)
        if found is not None:
            path, bad = found
            raise ApiError(400, f"{path}: the number {bad.text} {bad.reason}", code="invalid_value", param=key)
    return data


def _form_value(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"{name} is not UTF-8 text", code="invalid_value", param=name) from err


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """``multipart/form-data`` fields as text (what the openai SDK sends). Files are refused naming their field."""
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart() or message.defects:
        raise ApiError(400, "the body is not valid multipart/form-data", code="invalid_body")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "a multipart part has no field name", code="invalid_body",
                           param=name if isinstance(name, str) else None)  # fmt: skip
        if part.get_filename() is not None:
            raise ApiError(400, f"{name}: file uploads are not supported (text-to-video only)",
                           code="unsupported_parameter", param=name)  # fmt: skip
        if name in fields:
            raise ApiError(400, f"{name} is given more than once", code="invalid_value", param=name)
        fields[name] = _form_value(name, part.get_payload(decode=True) or b"")
    return fields


def parse_urlencoded(body: bytes) -> dict[str, str]:
    """``application/x-www-form-urlencoded`` fields (``curl -d``)."""
    fields: dict[str, str] = {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(400, f"the body is not valid form data: {err}", code="invalid_body") from err
    for name, value in pairs:
        if name in fields:
            raise ApiError(400, f"{name} is given more than once", code="invalid_value", param=name)
        fields[name] = value
    return fields


def coerce_form_fields(fields: dict[str, str]) -> dict[str, Any]:
    """Form fields are text: numbers for the numeric fields (refusing non-integers and non-finite numbers)."""
    out: dict[str, Any] = dict(fields)
    for name in INT_FIELDS:
        if name in fields:
            text = fields[name].strip()
            if not _INT_TEXT.fullmatch(text) or len(text.lstrip("+-")) > MAX_INT_DIGITS:
                raise ApiError(400, f"{name} must be an integer, got {text[:40]!r}", code="invalid_type", param=name)
            out[name] = int(text)
    for name in FLOAT_FIELDS:
        if name in fields:
            try:
                value = float(fields[name])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ApiError(400, f"{name} must be a finite number, got {fields[name][:40]!r}",
                               code="invalid_type", param=name)  # fmt: skip
            out[name] = value
    return out


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A JSON object's fields (JSON is the default when no type is given), or form fields as typed values."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return parse_json(body)
    if media == "multipart/form-data":
        return coerce_form_fields(parse_multipart(body, content_type))
    if media == "application/x-www-form-urlencoded":
        return coerce_form_fields(parse_urlencoded(body))
    raise ApiError(
        415,
        f"unsupported Content-Type {media!r}: send application/json, multipart/form-data or "
        "application/x-www-form-urlencoded",
        code="unsupported_media_type",
    )
