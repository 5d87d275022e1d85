"""A local image host for the download tests and benchmarks: generated JPEGs and misbehaving endpoints.

    app = make_app(latency=0.05, size=256)
    async with serve(app) as base:          # "http://127.0.0.1:<port>"
        ... f"{base}/img/cat-1.jpg" ...
    app[STATS].requests["/img/cat-1.jpg"]   # what the server saw

Endpoints (`{name}` is any file name; each name gives its own deterministic image):
  /img/{name}            a JPEG, distinct per name (no two are near-duplicates)
  /dup/{name}            the same bytes as /img/{name}, under another URL
  /tiny/{name}           a 10x10 JPEG
  /slow/{name}           the image after `STATS.slow` seconds (settable at run time)
  /retry-after/{name}    429 with Retry-After: ?seconds= (default 1) on the first try, then the image
  /error/{name}          ?status= (500) the first ?times= tries (every time when absent), then the image
  /status/{code}/{name}  that status, always
  /redirect?to=URL       302 to URL;  /redirect/{n}/{name}: n hops, then /img/{name}
  /html-as-jpeg/{name}   a web page served as image/jpeg
  /html/{name}           a web page served as text/html
  /huge/{name}           a JPEG header then zeros, `huge_bytes` in all, streamed (?declare=1 sends Content-Length)
  /broken/{name}         Content-Length of the whole image, half of it sent, then the connection closed
  /truncated/{name}      the first 60% of the image, with a matching Content-Length
  /drip/{name}           the image at ?rate= bytes a second (default 2048), never pausing long enough to time out
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from PIL import Image

PAGE = b"<!DOCTYPE html><html><head><title>Not an image</title></head><body><p>Hello</p></body></html>"


@functools.lru_cache(maxsize=8192)
def image_bytes(name: str, size: int = 256, quality: int = 85) -> bytes:
    """A deterministic JPEG for `name`: smooth random colour blobs plus fine noise."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = np.clip(smooth + rng.integers(-10, 11, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class Stats:
    """What the server saw, and the knobs a test may turn while it runs."""

    slow: float = 30.0  # seconds /slow/ waits before answering
    requests: Counter = field(default_factory=Counter)  # path -> requests
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # path -> time.monotonic()s
    slow_waiting: int = 0  # /slow/ requests waiting right now
    slow_cancelled: int = 0  # /slow/ requests whose client went away
    huge_sent: int = 0  # bytes /huge/ managed to write
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait (without polling sleeps) until `condition()` holds after some request event."""
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def _event(self) -> None:
        self.changed.set()


STATS = web.AppKey("stats", Stats)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def shape_bytes(name: str, size: int = 256, quality: int = 85) -> bytes | None:
    """A generated picture of the shape a path's first part names ("circles/…"), or None for another name. As on
    the real web, about one result in six shows another shape: the mistakes a workshop cleans up."""
    from tests.conftest import CLASSES, jpeg_bytes, make_image

    kind = name.split("/", 1)[0]
    if kind not in CLASSES:
        return None
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    if seed % 6 == 0:
        kinds = list(CLASSES)
        kind = kinds[(kinds.index(kind) + 1) % len(kinds)]
    return jpeg_bytes(make_image(kind, seed, size), quality)


def make_app(*, latency: float = 0.0, size: int = 256, quality: int = 85, slow: float = 30.0,
             huge_bytes: int = 256 * 1024 * 1024, shapes: bool = False) -> web.Application:
    """shapes=True: /img/circles/… (squares, triangles) shows that shape, so a model can learn the labels (the
    demo); otherwise every image is smooth colour noise, distinct per name."""
    stats = Stats(slow=slow)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        stats.requests[request.path] += 1
        stats.times[request.path].append(time.monotonic())
        stats._event()
        if latency:
            await asyncio.sleep(latency)
        return await handler(request)

    def jpeg(request: web.Request, data: bytes | None = None) -> web.Response:
        body = image_bytes(request.match_info["name"], size, quality) if data is None else data
        return web.Response(body=body, content_type="image/jpeg")

    async def img(request: web.Request) -> web.Response:
        return jpeg(request, shape_bytes(request.match_info["name"], size, quality) if shapes else None)

    async def tiny(request: web.Request) -> web.Response:
        return jpeg(request, image_bytes(request.match_info["name"], 10, quality))

    async def slow_image(request: web.Request) -> web.Response:
        stats.slow_waiting += 1
        stats._event()
        try:
            await asyncio.sleep(stats.slow)
        except asyncio.CancelledError:
            stats.slow_cancelled += 1
            raise
        finally:
            stats.slow_waiting -= 1
            stats._event()
        return jpeg(request)

    async def retry_after(request: web.Request) -> web.Response:
        if stats.requests[request.path] == 1:
            return web.Response(status=429, headers={"Retry-After": request.query.get("seconds", "1")})
        return jpeg(request)

    async def error(request: web.Request) -> web.Response:
        times = int(request.query.get("times", "1000000"))
        if stats.requests[request.path] <= times:
            return web.Response(status=int(request.query.get("status", "500")), text="oops")
        return jpeg(request)

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def redirect_hops(request: web.Request) -> web.Response:
        n, name = int(request.match_info["n"]), request.match_info["name"]
        raise web.HTTPFound(f"/redirect/{n - 1}/{name}" if n > 1 else f"/img/{name}")

    async def html_as_jpeg(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="image/jpeg")

    async def html(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if request.query.get("declare"):
            resp.content_length = huge_bytes
        await resp.prepare(request)
        chunk = b"\0" * (64 * 1024)
        try:
            await resp.write(b"\xff\xd8\xff\xe0")
            while stats.huge_sent < huge_bytes:
                await resp.write(chunk)
                stats.huge_sent += len(chunk)
        except (ConnectionError, RuntimeError):  # the client stopped reading and went away
            pass
        return resp

    async def broken(request: web.Request) -> web.StreamResponse:
        data = image_bytes(request.match_info["name"], size, quality)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    async def drip(request: web.Request) -> web.StreamResponse:
        data = image_bytes(request.match_info["name"], size, quality)
        rate = int(request.query.get("rate", "2048"))  # bytes a second, in 10 pieces
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(data)
        await resp.prepare(request)
        step = max(1, rate // 10)
        for i in range(0, len(data), step):
            await resp.write(data[i:i + step])
            await asyncio.sleep(0.1)
        return resp

    async def truncated(request: web.Request) -> web.Response:
        data = image_bytes(request.match_info["name"], size, quality)
        return jpeg(request, data[: len(data) * 6 // 10])

    app = web.Application(middlewares=[count])
    app[STATS] = stats
    app.add_routes([
        web.get("/img/{name:.+}", img), web.get("/dup/{name}", img), web.get("/tiny/{name}", tiny),
        web.get("/slow/{name}", slow_image), web.get("/retry-after/{name}", retry_after),
        web.get("/error/{name}", error), web.get("/status/{code}/{name}", status),
        web.get("/redirect", redirect), web.get("/redirect/{n}/{name}", redirect_hops),
        web.get("/html-as-jpeg/{name}", html_as_jpeg), web.get("/html/{name}", html),
        web.get("/huge/{name}", huge), web.get("/broken/{name}", broken), web.get("/truncated/{name}", truncated),
        web.get("/drip/{name}", drip),
    ])
    return app


@asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run `app` on a free port of `host`; yields the base URL. Handlers stop when their client goes away."""
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    finally:
        await runner.cleanup()
