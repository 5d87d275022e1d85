"""How fast is `imgcls.ingest.ingest` compared with fastai's `verify_image`?

    .venv/bin/python bench/ingest.py [--n 200] [--seed 0] [--workers N] [--known 1000]

Generates N photo-like JPEGs of 1-3 megapixels (smooth colour, shapes and noise, seeded)
in a temporary folder, then times, in one run:

  baseline (fastai verify_image): Image.open(f); im.draft(mode, size // 8); im.load()
      -- what fastai.vision.utils.verify_image does (fastai is not imported here). It only
      decodes a 1/8-scale preview of each JPEG, so it checks far less than ingest does.
  ingest (1 process):  read the bytes, ingest() them, one after another.
  ingest (N processes): the same through a spawn-context ProcessPoolExecutor, bytes
      pickled to the workers, as the bot would run it. Pool start-up is not timed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcls.ingest import ingest  # noqa: E402
from imgcls.types import IngestLimits  # noqa: E402

BASELINE = "fastai verify_image"


def make_photo(rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image of 1-3 megapixels: smooth colour, a few shapes, sensor noise."""
    megapixels = rng.uniform(1.0, 3.0)
    aspect = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3])
    width = int((megapixels * 1e6 * aspect) ** 0.5)
    height = int(megapixels * 1e6 / width)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def fastai_verify(path: Path) -> None:
    im = Image.open(path)
    im.draft(im.mode, (im.size[0] // 8, im.size[1] // 8))
    im.load()


def timed(label: str, n: int, started: float, baseline: float | None) -> float:
    rate = n / (time.perf_counter() - started)
    ratio = f", {rate / baseline:.2f}x baseline ({BASELINE})" if baseline else ""
    print(f"{label}: {rate:.1f} images/s{ratio}", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="how many images (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--known", type=int, default=1000, help="unrelated perceptual hashes to compare against"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    known_phashes = [f"{int(h):016x}" for h in rng.integers(0, 2**63, args.known)]
    limits = IngestLimits()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        files = []
        megapixels = 0.0
        for i in range(args.n):
            img = make_photo(rng)
            megapixels += img.width * img.height / 1e6
            files.append(root / f"photo-{i:04d}.jpg")
            img.save(files[-1], "JPEG", quality=90)
        mean_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        print(
            f"generated {args.n} JPEGs, {megapixels / args.n:.1f} megapixels and {mean_mb:.2f} MB "
            f"on average, in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs"
        )

        started = time.perf_counter()
        for f in files:
            fastai_verify(f)
        baseline = timed(f"baseline ({BASELINE})", len(files), started, None)

        outcomes: Counter[str] = Counter()
        started = time.perf_counter()
        for f in files:
            data = f.read_bytes()
            outcome = ingest(data, root / "single", limits=limits, known_phashes=known_phashes)
            outcomes[outcome.reason or "ok"] += 1
        timed("ingest (1 process)", len(files), started, baseline)

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            list(pool.map(time.sleep, [0.5] * args.workers))  # start every worker,
            list(pool.map(ingest, [b""] * args.workers * 4, [tmp] * args.workers * 4))  # import
            started = time.perf_counter()
            futures = [
                pool.submit(
                    ingest, f.read_bytes(), str(root / "pool"), limits=limits,
                    known_phashes=known_phashes,
                )
                for f in files
            ]
            pooled = Counter(fu.result().reason or "ok" for fu in futures)
            timed(f"ingest ({args.workers} processes)", len(files), started, baseline)
        print(f"outcomes: 1 process {dict(outcomes)}, pool {dict(pooled)}")


if __name__ == "__main__":
    main()
