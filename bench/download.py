"""How fast does the downloader fill a workshop compared with fastai's download_images + verify_images?

    .venv/bin/python bench/download.py [--mode web|lan] [--n N] [--repeat 1] [--workdir DIR]
    lan only:                          [--latency 0.05] [--concurrency 32] [--labels 4]

--mode web (the default) is shaped like the real web (see WEB below): image sizes like real
originals, lognormal latency, hosts that hang, fail or drip, many hosts with a few big ones.
fastai runs with its own defaults (8 threads, timeout 4) and imgcls with the bot's settings
(DownloadConfig()). Besides images/s, it prints how long each side took to have 90% of its
final images: what a waiting workshop sees.

--mode lan: a local image server, in its own spawned process (so neither side's GIL or event loop slows
it), serves --n distinct JPEGs (700-1300 px squares of colour blobs and noise, quality 90,
about 100-400 KB; generated once and cached under --workdir, loaded into the server's
memory before anything is timed) after a --latency sleep per request. Then, one after the
other, on the same URLs:

  baseline (fastai download_images + verify_images): as the notebooks do,
      download_images(dest, urls=urls, max_pics=1000) with its defaults (8 threads, timeout 4),
      then verify_images(get_image_files(dest)) and failed.map(Path.unlink).
      Images/s = images kept / wall seconds. fastai's import is not timed (reported apart).
  imgcls (download_images): a fresh Store with --labels labels splitting the URLs, one
      `db` thread, a spawn ProcessPoolExecutor(os.cpu_count()) created and warmed before
      timing (as the bot does at start-up), make_session(DownloadConfig(allow=("127.0.0.1",),
      concurrency=C, per_host=C)) since every URL is on one host, and an in-bench
      CandidateSource that yields the URLs as Openverse-style candidates (no search API
      in the timing). Each body goes through the address guard and the streamed byte cap,
      then ingest (full decode, pixel limits, exact and near-duplicate checks, a normalised
      512 px copy) and the store. Images/s = images stored / wall seconds.

The goals: at least 3x the baseline's stored images/s in web mode and 1.5x in LAN mode, with
imgcls fully verifying and fastai only checking a preview. Each run prints `ratio: N.Nx`.

WEB: --n images (default 300) whose sizes are drawn from a lognormal with a median of 2 MP,
clipped to 0.3-12 MP (4:3, photo-like, quality 90), 5% of them PNGs; spread over WEB_HOSTS
ports of 127.0.0.1 (each port a host) with Zipf weights, so a few hosts hold most images;
each request waits a lognormal latency (median 150 ms, p95 2 s) before its answer; 3% of the
hosts accept and never answer, 3% answer 404 or 500, and 2% drip the body at 16 KB/s. The big
hosts behave (the hanging, failing and dripping ones are drawn from the rest).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcls.download import DownloadConfig, download_images, make_session  # noqa: E402
from imgcls.store import Store  # noqa: E402
from imgcls.types import Candidate  # noqa: E402

BASELINE = "fastai download_images + verify_images"
OURS = "download_images: guard, streamed cap, ingest in {workers} processes, store"
LAN_GOAL = 1.5
DATASET_VERSION = 1  # bump when the images change, so cached folders are regenerated
LABELS = ("apples", "bananas", "cherries", "dates", "elderberries", "figs", "grapes", "honeydew")
MIN_SIDE, SIDE_SPAN, QUALITY = 700, 601, 90  # 700-1300 px squares at quality 90: about 110-390 KB


# ---------------------------------------------------------------- the images, generated once


def write_jpeg(path: str, name: str, side: int) -> int:
    """Top-level so a process pool can run it: the image server fake's deterministic JPEG for `name`."""
    from tests.fakes.image_server import image_bytes

    data = image_bytes(name, side, QUALITY)
    Path(path).write_bytes(data)
    return len(data)


def dataset(workdir: Path, n: int) -> Path:
    """workdir/jpegs-v<V>-<n>/<name>.jpg, generated once per n and reused afterwards."""
    root = workdir / f"jpegs-v{DATASET_VERSION}-{n}"
    done = root / ".complete"
    if done.exists():
        print(f"images: reusing {root}")
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    jobs = [(str(root / f"{name}.jpg"), name, MIN_SIDE + (i * 37) % SIDE_SPAN) for i, name in enumerate(names(n))]
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(write_jpeg, *zip(*jobs), chunksize=16))
    done.write_text(json.dumps({"n": n}))
    print(f"images: generated {n} JPEGs in {time.perf_counter() - started:.1f} s into {root}")
    return root


def names(n: int) -> list[str]:
    """Image names: `photo-0000`, ... (the server serves /img/<name>.jpg)."""
    return [f"photo-{i:04d}" for i in range(n)]


# ---------------------------------------------------------------- the image server, in its own process


def _server_main(folder: str, latency: float, ready: Any, stop: Any) -> None:
    """Load every JPEG into memory, then serve /img/<name> after `latency` s, and /stats, until `stop`."""
    from aiohttp import web

    from tests.fakes.image_server import serve

    bodies = {p.name: p.read_bytes() for p in Path(folder).glob("*.jpg")}
    served = {"requests": 0, "bytes": 0}

    async def img(request: web.Request) -> web.Response:
        await asyncio.sleep(latency)
        body = bodies.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        served["requests"] += 1
        served["bytes"] += len(body)
        return web.Response(body=body, content_type="image/jpeg")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(served)

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/img/{name}", img), web.get("/stats", stats)])
        async with serve(app) as base:
            sizes = sorted(len(b) for b in bodies.values())
            ready.put((base, len(sizes), sizes[0], sizes[-1], statistics.fmean(sizes)))
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(main())


class ImageServer:
    """The server process: `with ImageServer(folder, latency) as base: ...`."""

    def __init__(self, folder: Path, latency: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.stop = context.Queue(), context.Event()
        self.proc = context.Process(target=_server_main, args=(str(folder), latency, self.ready, self.stop),
                                    daemon=True)

    def __enter__(self) -> tuple[str, int, int, int, float]:
        self.proc.start()
        return self.ready.get(timeout=120)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def served(base: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/stats", timeout=5) as resp:
        return json.load(resp)


# ---------------------------------------------------------------- the two sides


@dataclass(frozen=True)
class Timing:
    seconds: float
    kept: int
    requests: int
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.kept / self.seconds


def run_baseline(urls: list[str], base: str, *, max_pics: int = 1000, watch: bool = False) -> tuple[Timing, float]:
    """fastai's side; with `watch`, also the time until 90% of its kept images were on disk (it only knows which
    are good once verify_images has run), else nan."""
    from fastai.data.transforms import get_image_files
    from fastai.vision.utils import download_images as fastai_download_images, verify_images

    before = served(base)["requests"]
    with tempfile.TemporaryDirectory(prefix="bench-download-fastai-") as tmp:
        dest = Path(tmp) / "images"
        filling = Filling(dest) if watch else None
        with contextlib.redirect_stdout(io.StringIO()):  # fastprogress's bar; its cost stays in the timing
            started = time.perf_counter()
            fastai_download_images(dest, urls=urls, max_pics=max_pics)
            downloaded = time.perf_counter()
            failed = verify_images(get_image_files(dest))
            failed.map(Path.unlink)
            finished = time.perf_counter()
        if filling is not None:
            filling.stop()
        kept = len(get_image_files(dest))
    return Timing(finished - started, kept, served(base)["requests"] - before,
                  f"download {downloaded - started:.1f} s + verify {finished - downloaded:.1f} s, "
                  f"{len(failed)} failed verify_images"), filling.time_to(0.9 * kept) if filling else float("nan")


class ListSource:
    """A CandidateSource over fixed URLs per query, shaped like Openverse results."""

    def __init__(self, by_label: dict[str, list[str]]) -> None:
        self.by_label = by_label

    async def candidates(self, query: str, sources: Sequence[str]) -> AsyncIterator[Candidate]:
        for n, url in enumerate(self.by_label[query]):
            yield Candidate(provider="openverse", url=url, license="by 4.0", creator=f"Photographer {n}",
                            attribution=f'"{query} {n}" by Photographer {n} is licensed under CC BY 4.0.')


async def _imgcls(store: Store, wid: int, by_label: dict[str, list[str]], pool: ProcessPoolExecutor,
                  db: ThreadPoolExecutor, config: DownloadConfig) -> tuple[float, Any]:
    async with make_session(config) as session:
        started = time.perf_counter()
        report = await download_images(session=session, store=store, db=db, pool=pool, source=ListSource(by_label),
                                       workshop_id=wid, per_label=max(len(u) for u in by_label.values()),
                                       config=config)
        return time.perf_counter() - started, report


def run_imgcls(by_label: dict[str, list[str]], base: str, pool: ProcessPoolExecutor, concurrency: int) -> Timing:
    config = DownloadConfig(allow=("127.0.0.1",), concurrency=concurrency, per_host=concurrency)
    before = served(base)["requests"]
    cpu = os.times()
    with tempfile.TemporaryDirectory(prefix="bench-download-imgcls-") as tmp, ThreadPoolExecutor(1) as db:
        store = Store(tmp)
        try:
            wid = store.create_workshop("bench", list(by_label))["id"]
            seconds, report = asyncio.run(_imgcls(store, wid, by_label, pool, db, config))
            stored = len(store.images(wid))
        finally:
            store.close()
    spent = sum(os.times()[:2]) - sum(cpu[:2])  # this process: event loop, db thread, store set-up
    refused = ", ".join(f"{n} {r}" for r, n in sorted(report.reasons.items())) or "none"
    return Timing(seconds, stored, served(base)["requests"] - before,
                  f"{report.added} added, {report.tried} tried, refused: {refused}; event-loop process CPU "
                  f"{spent:.1f} s")


def ingest_ms(folder: Path, n: int = 50) -> float:
    """Milliseconds of `ingest` per image in this process, on the first n cached JPEGs: the CPU cost
    that bounds imgcls's images/s at about (CPUs / cost) whatever the downloader does."""
    from imgcls.ingest import ingest
    from imgcls.types import IngestLimits

    bodies = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:n]]
    with tempfile.TemporaryDirectory(prefix="bench-download-ingest-") as tmp:
        started = time.perf_counter()
        for data in bodies:
            ingest(data, tmp, limits=IngestLimits(), known_sha256=(), known_phashes=())
        return (time.perf_counter() - started) * 1000 / len(bodies)


def _warm(_: int) -> int:
    """Import ingest's dependencies in a pool worker, as the first real ingest would."""
    import imgcls.ingest  # noqa: F401

    time.sleep(0.2)  # hold this worker so the next task starts another
    return os.getpid()


# ---------------------------------------------------------------- web mode

WEB_HOSTS = 100
WEB_SEED = 7


def web_plan(n: int) -> dict[str, Any]:
    """Sizes, formats, hosts and latencies of the web mode's images, and what each host does; seeded."""
    import numpy as np

    rng = np.random.default_rng(WEB_SEED)
    megapixels = np.clip(rng.lognormal(np.log(2.0), 0.75, n), 0.3, 12.0)
    png = rng.random(n) < 0.05
    weights = 1 / np.arange(1, WEB_HOSTS + 1) ** 1.1
    hosts = rng.choice(WEB_HOSTS, n, p=weights / weights.sum())
    latency = rng.lognormal(np.log(0.15), np.log(2.0 / 0.15) / 1.645, n)
    small = rng.permutation(np.arange(5, WEB_HOSTS))  # the five biggest hosts behave
    behaviour = {int(h): "hang" for h in small[:3]} | {int(h): "error" for h in small[3:6]} | \
        {int(h): "drip" for h in small[6:8]}
    items = [{"name": f"web-{i:04d}.{'png' if png[i] else 'jpg'}", "megapixels": float(megapixels[i]),
              "host": int(hosts[i]), "latency": float(latency[i])} for i in range(n)]
    return {"items": items, "behaviour": behaviour}


def write_web_image(path: str, seed: int, megapixels: float) -> int:
    """A photo-like 4:3 image of about `megapixels` (smooth colour, shapes, mild sensor noise), JPEG or PNG."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([WEB_SEED, seed])
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                 Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x, y, x + width // 4, y + height // 4), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noise = rng.integers(-5, 6, (height, width, 1), dtype=np.int16)
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    if path.endswith(".png"):
        img.save(path, "PNG", compress_level=6)
    else:
        img.save(path, "JPEG", quality=90)
    return Path(path).stat().st_size


def web_dataset(workdir: Path, plan: dict[str, Any]) -> Path:
    items = plan["items"]
    root = workdir / f"web-v{DATASET_VERSION}-{WEB_SEED}-{len(items)}"
    if (root / ".complete").exists():
        print(f"images: reusing {root}")
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(write_web_image, [str(root / it["name"]) for it in items], range(len(items)),
                      [it["megapixels"] for it in items], chunksize=4))
    (root / ".complete").write_text("{}")
    print(f"images: generated {len(items)} in {time.perf_counter() - started:.1f} s into {root}")
    return root


def _web_server_main(folder: str, plan: dict[str, Any], ready: Any, stop: Any) -> None:
    from aiohttp import web

    bodies = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.suffix in (".jpg", ".png")}
    latency = {it["name"]: it["latency"] for it in plan["items"]}
    behaviour = {int(k): v for k, v in plan["behaviour"].items()}
    ports: dict[int, int] = {}  # port -> host index
    served = {"requests": 0, "bytes": 0}

    async def img(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        host = ports[request.transport.get_extra_info("sockname")[1]]
        served["requests"] += 1
        what = behaviour.get(host, "ok")
        if what == "hang":
            await asyncio.sleep(3600)  # accepted, never answered
        await asyncio.sleep(latency.get(name, 0.15))
        if what == "error":
            raise (web.HTTPNotFound() if hash(name) % 2 else web.HTTPInternalServerError())
        body = bodies.get(name)
        if body is None:
            raise web.HTTPNotFound()
        kind = "image/png" if name.endswith(".png") else "image/jpeg"
        if what == "drip":  # 16 KB/s
            resp = web.StreamResponse(headers={"Content-Type": kind, "Content-Length": str(len(body))})
            await resp.prepare(request)
            for i in range(0, len(body), 4096):
                await resp.write(body[i:i + 4096])
                await asyncio.sleep(0.25)
            served["bytes"] += len(body)
            return resp
        served["bytes"] += len(body)
        return web.Response(body=body, content_type=kind)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(served)

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/img/{name}", img), web.get("/stats", stats)])
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        bases = []
        for host in range(WEB_HOSTS):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            ports[port] = host
            bases.append(f"http://127.0.0.1:{port}")
        ready.put(bases)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await runner.cleanup()

    asyncio.run(main())


class WebServer(ImageServer):
    def __init__(self, folder: Path, plan: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.stop = context.Queue(), context.Event()
        self.proc = context.Process(target=_web_server_main, args=(str(folder), plan, self.ready, self.stop),
                                    daemon=True)


class Filling:
    """Counts the image files under a folder every 0.1 s, from a thread: when did a side have 90% of its final
    images?"""

    def __init__(self, folder: Path) -> None:
        self.folder, self.samples = folder, []
        self._stop = False
        self.started = time.perf_counter()
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            count = sum(1 for p in self.folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
                if self.folder.exists() else 0
            self.samples.append((time.perf_counter() - self.started, count))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop = True
        self._thread.join()

    def time_to(self, n: float) -> float:
        return next((t for t, c in self.samples if c >= n), float("nan"))


def run_web(args: argparse.Namespace) -> None:
    plan = web_plan(args.n)
    items = plan["items"]
    mp = sorted(it["megapixels"] for it in items)
    lat = sorted(it["latency"] for it in items)
    per_host = [sum(1 for it in items if it["host"] == h) for h in range(WEB_HOSTS)]
    odd = {k: [h for h, v in plan["behaviour"].items() if v == k] for k in ("hang", "error", "drip")}
    odd_urls = {k: sum(per_host[h] for h in hosts) for k, hosts in odd.items()}
    print(f"web mode: {len(items)} images, {mp[0]:.1f}-{mp[-1]:.1f} MP (median {statistics.median(mp):.1f}), "
          f"{sum(it['name'].endswith('.png') for it in items)} PNGs; latency median "
          f"{statistics.median(lat) * 1000:.0f} ms, p95 {lat[int(0.95 * len(lat))] * 1000:.0f} ms; {WEB_HOSTS} hosts, "
          f"the biggest with {sorted(per_host)[-3:][::-1]} images; hosts that hang {odd['hang']} "
          f"({odd_urls['hang']} URLs), fail {odd['error']} ({odd_urls['error']} URLs), drip {odd['drip']} "
          f"({odd_urls['drip']} URLs)")
    c = DownloadConfig()
    print("sides: fastai download_images(n_workers=8, timeout=4) + verify_images; imgcls download_images with "
          f"DownloadConfig() (the bot's: concurrency {c.concurrency}, {c.per_host} per host, timeouts "
          f"{c.connect_timeout:g}/{c.read_timeout:g}/{c.total_timeout:g} s; a drip that cannot finish within "
          f"{c.total_timeout:g} s given up after {c.slow_after:g} s) and ingest in {os.cpu_count()} processes")
    folder = web_dataset(Path(args.workdir), plan)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import fastai.vision.utils  # noqa: F401 - the baseline's import, outside its timing
    import fastai.data.transforms  # noqa: F401
    workers = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with WebServer(folder, plan) as bases, ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_warm, range(workers)))
        urls = [f"{bases[it['host']]}/img/{it['name']}" for it in items]
        by_label: dict[str, list[str]] = {}
        for i, url in enumerate(urls):
            by_label.setdefault(LABELS[i * 4 // len(urls)], []).append(url)
        results: dict[str, list[tuple[Timing, float]]] = {"baseline": [], "imgcls": []}
        for n in range(args.repeat):
            order = [("baseline", lambda: run_baseline(urls, bases[0], max_pics=10_000, watch=True)),
                     ("imgcls", lambda: web_imgcls(by_label, bases[0], pool))]
            for name, fn in (order if n % 2 == 0 else order[::-1]):
                t, t90 = fn()
                results[name].append((t, t90))
                print(f"  [{n + 1}/{args.repeat}] {name}: {t.kept} kept in {t.seconds:.1f} s, {t.rate:.1f} images/s, "
                      f"90% of them after {t90:.1f} s ({t.detail})", flush=True)
    base_rate = statistics.median(t.rate for t, _ in results["baseline"])
    ours_rate = statistics.median(t.rate for t, _ in results["imgcls"])
    b90 = statistics.median(x for _, x in results["baseline"])
    o90 = statistics.median(x for _, x in results["imgcls"])
    print()
    print(f"baseline ({BASELINE}): {base_rate:.1f} images/s; 90% of its final images after {b90:.1f} s")
    print(f"imgcls: {ours_rate:.1f} images/s; 90% of its final images after {o90:.1f} s")
    print(f"ratio: {ours_rate / base_rate:.1f}x baseline in web mode (goal: at least 3x): "
          f"{'met' if ours_rate / base_rate >= 3 else 'NOT met'}; time to 90%: {b90 / o90:.1f}x sooner")


def web_imgcls(by_label: dict[str, list[str]], base: str, pool: ProcessPoolExecutor) -> tuple[Timing, float]:
    config = DownloadConfig(allow=("127.0.0.1",))
    with tempfile.TemporaryDirectory(prefix="bench-download-imgcls-") as tmp, ThreadPoolExecutor(1) as db:
        store = Store(tmp)
        filling = Filling(Path(store.images_dir))
        try:
            wid = store.create_workshop("bench", list(by_label))["id"]
            seconds, report = asyncio.run(_imgcls(store, wid, by_label, pool, db, config))
            stored = len(store.images(wid))
        finally:
            filling.stop()
            store.close()
    refused = ", ".join(f"{n} {r}" for r, n in sorted(report.reasons.items())) or "none"
    return Timing(seconds, stored, 0, f"{report.added} added, refused: {refused}"), filling.time_to(0.9 * stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=("web", "lan"), default="web")
    parser.add_argument("--n", type=int, default=None, help="distinct images (URLs): default 300 (web), 1000 (lan)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before each answer")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="imgcls requests in flight (DownloadConfig concurrency and per_host)")
    parser.add_argument("--labels", type=int, default=4, choices=range(1, len(LABELS) + 1), metavar="1-8",
                        help="imgcls workshop labels splitting the URLs")
    parser.add_argument("--repeat", type=int, default=1, help="run each side this many times (median reported)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "imgcls-bench-download"),
                        help="where the generated JPEGs are cached between runs")
    args = parser.parse_args()
    if args.mode == "web":
        args.n = args.n or 300
        return run_web(args)
    args.n = args.n or 1000
    workers = os.cpu_count() or 1
    print(f"settings: {args.n} URLs, latency {args.latency * 1000:.0f} ms, imgcls concurrency {args.concurrency} "
          f"(per host {args.concurrency}), {args.labels} labels, fastai n_workers 8 timeout 4, "
          f"repeat {args.repeat}, {workers} CPUs")

    folder = dataset(Path(args.workdir), args.n)
    started = time.perf_counter()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's import-time noise
    import fastai.vision.utils  # noqa: F401 - the baseline's import, outside its timing
    import fastai.data.transforms  # noqa: F401
    print(f"fastai: imported in {time.perf_counter() - started:.1f} s (not timed)")

    cost = ingest_ms(folder)
    print(f"ingest alone: {cost:.1f} ms per image in one process, so imgcls can store at most about "
          f"{workers * 1000 / cost:.0f} images/s on {workers} CPUs (less the event loop's and the server's share)")
    context = multiprocessing.get_context("spawn")
    with ImageServer(folder, args.latency) as (base, count, smallest, largest, mean), \
            ProcessPoolExecutor(workers, mp_context=context) as pool:
        print(f"server: {base} in its own process, {count} JPEGs in memory, {smallest / 1024:.0f}-"
              f"{largest / 1024:.0f} KB (mean {mean / 1024:.0f} KB), {args.latency * 1000:.0f} ms added per request")
        pids = set(pool.map(_warm, range(workers)))
        print(f"imgcls: spawn ProcessPoolExecutor({workers}) created and warmed before timing "
              f"({len(pids)} workers, imgcls.ingest imported), as the bot does at start-up; "
              "candidates from an in-bench CandidateSource (no search API)")
        urls = [f"{base}/img/{name}.jpg" for name in names(args.n)]
        by_label: dict[str, list[str]] = {}  # consecutive equal shares of the URLs
        for i, url in enumerate(urls):
            by_label.setdefault(LABELS[i * args.labels // len(urls)], []).append(url)

        baseline: list[Timing] = []
        ours: list[Timing] = []
        for n in range(args.repeat):
            order = [("baseline", lambda: run_baseline(urls, base)[0], baseline),
                     ("imgcls", lambda: run_imgcls(by_label, base, pool, args.concurrency), ours)]
            for name, fn, results in (order if n % 2 == 0 else order[::-1]):
                load = os.getloadavg()[0]
                t = fn()
                results.append(t)
                print(f"  [{n + 1}/{args.repeat}] {name}: {t.kept} kept in {t.seconds:.1f} s, {t.rate:.1f} images/s "
                      f"({t.detail}; {t.requests} requests served; load average {load:.1f} -> "
                      f"{os.getloadavg()[0]:.1f})", flush=True)

    base_rate = statistics.median(t.rate for t in baseline)
    ours_rate = statistics.median(t.rate for t in ours)
    b = min(baseline, key=lambda t: abs(t.rate - base_rate))
    o = min(ours, key=lambda t: abs(t.rate - ours_rate))
    ratio = ours_rate / base_rate
    print()
    print(f"baseline ({BASELINE}): {args.n} URLs, {b.kept} images kept in {b.seconds:.1f} s: {base_rate:.1f} images/s")
    print(f"imgcls ({OURS.format(workers=workers)}): {o.kept} stored in {o.seconds:.1f} s: {ours_rate:.1f} images/s")
    print("  verification: baseline decodes a 1/8-scale preview (verify_image's draft); imgcls fully decodes, "
          "checks pixel limits, refuses exact and near duplicates and stores normalised 512 px copies")
    print(f"ratio: {ratio:.1f}x baseline in LAN mode (goal: at least {LAN_GOAL:.1f}x): "
          f"{'met' if ratio >= LAN_GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
