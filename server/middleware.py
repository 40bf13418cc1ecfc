"""ASGI middleware that bounds every request before the application sees it: body size and total time.

* A body larger than ``max_bytes`` is refused with 413: at once when ``Content-Length`` says so, else as soon as
  the bytes received pass the limit (chunked uploads). This caps what even a client without a key can make the
  server read.
* A request that takes longer than ``timeout_s`` (a slow upload or slow work) is answered 504. Work already running
  in a thread cannot be stopped; it finishes in the background and its answer is dropped (an enroll that commits
  after the 504 still commits: ask ``GET /v1/people`` when in doubt).
"""
from __future__ import annotations

import asyncio

from server.problems import problem_bytes


class _TooLarge(Exception):
    pass


class Limits:
    def __init__(self, app, *, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = (413, f"request body larger than {self.max_bytes} bytes", "request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _answer(scope, send, *too_large)
        state = {"received": 0, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, limited_receive, tracking_send), self.timeout_s)
        except _TooLarge:
            if not state["started"]:
                await _answer(scope, send, *too_large)
        except asyncio.TimeoutError:
            if not state["started"]:
                await _answer(scope, send, 504, f"the request took longer than {self.timeout_s:g} s", "timeout")


async def _answer(scope, send, status: int, detail: str, code: str) -> None:
    headers, body = problem_bytes(status, detail, code, scope.get("path", ""))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
