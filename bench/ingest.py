"""How much CPU does `imgcls.ingest.ingest` spend per image, against fastai's `verify_image` and a bare decode?

    .venv/bin/python bench/ingest.py [--n 24] [--seed 0] [--repeat 3] [--known 1000]

Generates photo-like JPEGs (smooth colour, shapes and sensor noise, seeded, quality 90) in two
sizes, in a temporary folder: camera-sized (8-12 megapixels) and small (about 0.5 megapixels).
For each set, in one run and on the same files, it measures CPU time per image
(`time.process_time`, the best of --repeat passes, sides interleaved) of:

  baseline (fastai verify_image): Image.open(f); im.draft(mode, size // 8); im.load()
      -- what fastai.vision.utils.verify_image does (fastai is not imported here). It only
      decodes a 1/8-scale preview, so it checks far less than ingest does.
  bare full decode: Image.open(f); im.load(), the least any full check of the data costs.
  ingest: read the bytes and ingest() them (decode, checks, 512 px copy, hashes, write).

and prints `ingest/verify_image` for both sets and `ingest/full decode` for the small set
(the goals: at most 1.0x for camera-sized, at most 2x for small). It also prints the PSNR of
ingest's 512 px copy against a reference (a full decode, then a plain Lanczos resize).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcls.ingest import ingest  # noqa: E402
from imgcls.types import IngestLimits  # noqa: E402

BASELINE = "fastai verify_image"


def make_photo(rng: np.random.Generator, megapixels: float) -> Image.Image:
    """A photo-like RGB image of about `megapixels`: smooth colour, a few shapes, sensor noise."""
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


def bare_decode(path: Path) -> None:
    im = Image.open(path)
    im.load()


def cpu_per_image(fn, files, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for f in files:
            fn(f)
        best = min(best, time.process_time() - started)
    return best / len(files)


def make_set(root: Path, rng, n: int, low: float, high: float, name: str) -> list[Path]:
    files = []
    for i in range(n):
        img = make_photo(rng, rng.uniform(low, high))
        files.append(root / f"{name}-{i:03d}.jpg")
        img.save(files[-1], "JPEG", quality=90)
    return files


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=24, help="images per set (default 24)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--known", type=int, default=1000, help="unrelated perceptual hashes to compare against")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    known_phashes = [f"{int(h):016x}" for h in rng.integers(0, 2**63, args.known)]
    limits = IngestLimits()
    print(f"settings: {args.n} images per set, best of {args.repeat}, {args.known} known hashes, "
          f"stored copy {limits.stored_max_side} px at quality {limits.jpeg_quality}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        sets = {"camera-sized (8-12 MP)": make_set(root, rng, args.n, 8.0, 12.0, "camera"),
                "small (about 0.5 MP)": make_set(root, rng, args.n, 0.4, 0.6, "small")}
        counter = iter(range(10**9))

        def run_ingest(f: Path) -> None:
            out = root / f"store-{next(counter)}"  # a fresh folder: every image is written, none is a duplicate
            outcome = ingest(f.read_bytes(), out, limits=limits, known_phashes=known_phashes)
            assert outcome.ok, outcome

        for name, files in sets.items():
            mean_mp = sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / len(files) / 1e6
            mean_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
            verify = cpu_per_image(fastai_verify, files, args.repeat)
            decode = cpu_per_image(bare_decode, files, args.repeat)
            ours = cpu_per_image(run_ingest, files, args.repeat)
            worst = min(psnr(stored_copy(f, root, limits), reference(f, limits.stored_max_side)) for f in files)
            print(f"{name}: {mean_mp:.1f} MP, {mean_mb:.2f} MB on average; CPU per image: {BASELINE} "
                  f"{verify * 1e3:.1f} ms, bare full decode {decode * 1e3:.1f} ms, ingest {ours * 1e3:.1f} ms; "
                  f"ratio: {ours / verify:.2f}x {BASELINE}, {ours / decode:.2f}x bare full decode; "
                  f"stored copy vs full Lanczos: PSNR >= {worst:.1f} dB", flush=True)


def stored_copy(f: Path, root: Path, limits: IngestLimits) -> Image.Image:
    outcome = ingest(f.read_bytes(), root / "psnr", limits=limits)
    return Image.open(root / "psnr" / outcome.path).convert("RGB")


def reference(f: Path, max_side: int) -> Image.Image:
    im = Image.open(f)
    im.load()
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


if __name__ == "__main__":
    main()
