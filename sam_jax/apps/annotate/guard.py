"""ASGI middleware in front of every route: Host/Origin checks, body size limit, security headers.

- Host: with a local bind only ``127.0.0.1``/``localhost``/``[::1]`` are answered, so a web page
  cannot reach the server through DNS rebinding (``allowed_hosts=None`` turns the check off).
- Origin: a state-changing request whose ``Origin`` is not this server is refused (403); together
  with requiring ``Content-Type: application/json`` (:func:`read_json`) no other site can post here.
- Size: a declared ``Content-Length`` above the limit is refused (413) before the body is read;
  :func:`read_json` enforces the limit on the bytes actually received.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class ApiError(Exception):
    """An expected refusal, answered as ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _hostname(netloc: str) -> str:
    """``"[::1]:8000"`` -> ``"::1"``, ``"Localhost:80"`` -> ``"localhost"``."""
    host = urlsplit("//" + netloc).hostname
    return (host or "").lower()


class GuardMiddleware:
    """See the module docstring. ``allowed_hosts=None`` accepts any Host (``--allow-remote``)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str] | None, max_body_bytes: int) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = None
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            refusal = error_response(400, f"requests for host {host!r} are refused (the server answers local requests)")
        elif scope["method"] not in SAFE_METHODS and "origin" in headers and urlsplit(headers["origin"]).netloc != host:
            refusal = error_response(403, "cross-origin request refused")
        else:
            length = headers.get("content-length", "0").strip() or "0"
            if not length.isdigit():
                refusal = error_response(400, "bad Content-Length header")
            elif int(length) > self.max_body_bytes:
                refusal = error_response(413, f"request body larger than {self.max_body_bytes} bytes")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object body; :class:`ApiError` 415 (not JSON), 413 (too large) or 400."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "send the request body as JSON with Content-Type: application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body larger than {max_bytes} bytes")
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object")
    return data
