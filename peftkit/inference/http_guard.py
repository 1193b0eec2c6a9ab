"""What stands between the network and `peftkit serve`'s routes: one ASGI middleware that checks every request
before a route sees it, and writes the one log line every response gets (500s included).

In order, for each HTTP request:

1. ``Host`` must be a name the server answers to (`Security.allowed_hosts`): a page on another site that re-points
   its own name at 127.0.0.1 (DNS rebinding) gets 403.
2. With API keys (`read_api_keys`), ``Authorization: Bearer KEY`` must carry a key whose scope covers the route:
   ``score`` for scoring and reading (``/metrics`` too), ``admin`` for changing adapters and ``POST /v1/reload``
   (admin keys may score). 401 without a valid key,
   403 with the wrong scope. Keys are compared in constant time and never logged. ``/healthz`` stays open.
3. A POST must say ``Content-Type: application/json`` (415 otherwise): browsers send cross-site "simple" requests
   only as text/plain, form-urlencoded or multipart, so no web page can post to the server.
4. The body is read here, counting the bytes actually received whatever the framing: over the limit is 413, a
   ``Content-Length`` beside ``Transfer-Encoding`` is 400 (the two disagree about where the body ends), a body that
   stops arriving for `Security.body_timeout_s` is 408.

Every response is logged as one line (method, path, status, latency, what the route added), with client-sent values
escaped and cut to a bounded length, so a newline or an ANSI escape in a segment name cannot forge or hide a line.
Nothing here is peftkit-specific; Starlette ships no middleware that counts body bytes or checks API-key scopes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError

SCOPES = ("score", "admin")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_LOG_VALUE_CHARS = 200


@dataclass(frozen=True)
class Security:
    """Who may call the server and how requests are bounded.

    Attributes:
        api_keys: (scope, key) pairs; None: no authentication (loopback, or ``--no-auth``).
        allowed_hosts: names the ``Host`` header may carry (ports aside); ``"*"`` among them allows any.
        body_timeout_s: the longest wait for the next piece of a request body.
    """

    api_keys: tuple[tuple[str, str], ...] | None = None
    allowed_hosts: frozenset[str] = field(default=LOOPBACK_NAMES)
    body_timeout_s: float = 10.0


def read_api_keys(path: str | Path) -> tuple[tuple[str, str], ...]:
    """``SCOPE KEY`` per line (``#`` comments and blank lines skipped); a bad line is one error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PeftkitError(f"--api-keys {path}: cannot read it ({exc.__class__.__name__})") from None
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SCOPES:
            raise PeftkitError(
                f"--api-keys {path} line {number}: write 'SCOPE KEY' with SCOPE one of {', '.join(SCOPES)}"
            )
        if len(parts[1]) < 16:
            raise PeftkitError(f"--api-keys {path} line {number}: a key needs at least 16 characters")
        keys.append((parts[0], parts[1]))
    if not keys:
        raise PeftkitError(f"--api-keys {path} holds no key; add lines like 'score <key>' and 'admin <key>'")
    return tuple(keys)


def route_scope(method: str, path: str) -> str | None:
    """The scope a request needs: None for the open health check, ``admin`` to change adapters, else ``score``."""
    if path == "/healthz":
        return None
    if method == "POST" and path in ("/v1/adapters", "/v1/reload"):
        return "admin"
    return "score"


def clean(value: Any) -> str:
    """A client-sent value fit for one log line: unprintable characters escaped, at most 200 characters."""
    text = str(value)
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= _LOG_VALUE_CHARS else text[: _LOG_VALUE_CHARS - 3] + "..."


class Guard:
    """The ASGI middleware described in the module docstring. ``max_body_bytes`` bounds each request body."""

    def __init__(self, app, *, max_body_bytes: int, security: Security, log: logging.Logger):
        self.app, self.max_body_bytes, self.security, self.log = app, max_body_bytes, security, log

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        notes: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = notes
        status = {"code": 0}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            problem = self._check_headers(scope)
            body = b""
            if problem is None and scope["method"] == "POST":
                body, problem = await self._read_body(scope, receive)
            if problem is not None:
                await _respond(tracked_send, *problem)
            else:
                await self.app(scope, _replay(body, receive), tracked_send)
        except Exception as exc:  # noqa: BLE001 - every failure answers and is logged, never a bare traceback
            notes["error"] = f"{type(exc).__name__}: {exc}"
            if os.environ.get("PEFTKIT_DEBUG"):
                self.log.error("%s", traceback.format_exc())
            if status["code"] == 0:
                await _respond(tracked_send, 500, "internal error; the server log has the request's line")
        finally:
            elapsed_ms = 1000 * (time.perf_counter() - started)
            extra = " ".join(f"{k}={clean(v)}" for k, v in notes.items())
            self.log.info(
                "%s %s %d %.1fms %s", scope["method"], clean(scope["path"]), status["code"], elapsed_ms, extra
            )

    def _check_headers(self, scope: dict) -> tuple | None:
        headers = _headers(scope)
        method, path = scope["method"], scope["path"]
        needed = route_scope(method, path)
        if needed is not None and not self._host_allowed(headers.get("host", "")):
            return 403, "this server does not answer to that Host name; start it with --allowed-host NAME"
        if needed is not None and self.security.api_keys is not None:
            granted = self._scope_of(headers.get("authorization", ""))
            if granted is None:
                return (
                    401,
                    "send 'Authorization: Bearer KEY' with a valid key",
                    {"www-authenticate": "Bearer"},
                )
            if needed == "admin" and granted != "admin":
                return 403, f"this key's scope is {granted!r}; {method} {path} needs an admin key"
        if method == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, "send the body as JSON with 'Content-Type: application/json' (curl: --json '...')"
            if "transfer-encoding" in headers and "content-length" in headers:
                return 400, "a request may not carry both Content-Length and Transfer-Encoding"
            size = headers.get("content-length")
            if size is None and "transfer-encoding" not in headers:
                return 411, "send a Content-Length header with the request body"
            if size is not None and (not size.isdigit() or int(size) > self.max_body_bytes):
                shown = f"{int(size):,} bytes" if size.isdigit() else f"{clean(size)!r}"
                return 413, f"request body is {shown}; the limit is {self.max_body_bytes:,}"
        return None

    def _host_allowed(self, host: str) -> bool:
        allowed = self.security.allowed_hosts
        return "*" in allowed or host_name(host) in allowed

    def _scope_of(self, authorization: str) -> str | None:
        kind, _, presented = authorization.partition(" ")
        if kind.lower() != "bearer" or not presented:
            return None
        granted = None
        for scope, key in self.security.api_keys or ():  # every key compared: the time says nothing of which
            if hmac.compare_digest(presented.strip().encode(), key.encode()) and granted != "admin":
                granted = scope
        return granted

    async def _read_body(self, scope: dict, receive: Callable) -> tuple[bytes, tuple | None]:
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.security.body_timeout_s)
            except asyncio.TimeoutError:
                return b"", (
                    408,
                    f"the request body did not arrive within {self.security.body_timeout_s:g} s",
                )
            if message["type"] == "http.disconnect":
                return b"", (400, "the client went away before the body was read")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # counted as received: chunked bodies and false lengths alike
                return b"", (413, f"request body is over {self.max_body_bytes:,} bytes, the limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def host_name(host: str) -> str:
    """The name in a ``Host`` header, port aside: ``[::1]:8000`` -> ``::1``, ``shop.example:80`` -> ``shop.example``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replay


async def _respond(send: Callable, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
