"""How much slower is classifying one pasted image than the model's bare forward pass?

    .venv/bin/python bench/predict.py [--size 128] [--calls 50] [--warmup 5] [--photo-mp 2.0]
                                      [--per-label 10] [--seed 0] [--model-dir DIR]

Trains a small lite0 model first (3 classes x --per-label generated photos, 1 frozen + 1
epoch at --size px) with `runs.train_workshop`, so the model is exported with its sha256
recorded in the store; or reuses the latest finished run in --model-dir. Then times, at
batch 1, after --warmup calls, --calls calls of each (interleaved round by round, so a
busy machine slows them all alike):

  baseline (bare forward): `learn.model(x)` under torch.inference_mode on an already
      prepared 1x3xSxS tensor (S = the training size), the learner loaded with
      `imgcls.predict.load_verified`.
  Predictor.predict: `Predictor().predict(model_path, sha256, jpeg_bytes)`: decode, the
      learner's validation transforms, forward, softmax, top k. Timed twice: with a JPEG of
      SxS pixels (the path's own overhead) and with a photo of --photo-mp megapixels
      (what people paste, decode and resize included).
  learn.predict: fastai's `Learner.predict(PILImage)` on the SxS image, already decoded,
      for reference.
  Predictor.predict with ONNX: the bot's path (the run's ONNX copy in ONNX Runtime, no torch),
      on both JPEGs; the photo is decoded at a DCT scale (Image.draft), as ingest does.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import CLASSES, make_photo  # noqa: E402 - bench/train.py's photo generator

from imgcls.collect import add_files  # noqa: E402
from imgcls.errors import NotFound  # noqa: E402
from imgcls.jobs import ProcessJobExecutor  # noqa: E402
from imgcls.runs import RunParams, train_workshop  # noqa: E402
from imgcls.store import Store  # noqa: E402

BASELINE = "bare forward"
WORKSHOP = "bench-predict"


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def centre_square(img: Image.Image, side: int) -> Image.Image:
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.LANCZOS)


def trained_run(store: Store, args: argparse.Namespace) -> dict:
    """The latest finished run in the store, or a new one trained on generated photos."""
    try:
        wid = store.find_workshop(WORKSHOP)["id"]
        run = store.latest_run(wid)
        print(f"model: reusing run {run['id']} in {store.data_dir} (size {run['params']['size']})")
        return run
    except NotFound:
        pass
    started = time.perf_counter()
    wid = store.create_workshop(WORKSHOP, list(CLASSES))["id"]
    with tempfile.TemporaryDirectory(prefix="bench-predict-photos-") as tmp:
        files = []
        for k, label in enumerate(CLASSES):
            for i in range(args.per_label):
                path = Path(tmp) / f"{label}-{i:03d}.jpg"
                path.write_bytes(jpeg(make_photo(label, np.random.default_rng([args.seed, k, i]))))
                files.append((label, path))
        add_files(store, wid, files)
    params = RunParams(arch="lite0", epochs=1, freeze_epochs=1, size=args.size, bs=16, seed=42)
    run = train_workshop(store, wid, params, ProcessJobExecutor())
    if run["status"] != "done":
        raise SystemExit(f"training failed: {run['error']}")
    print(f"model: trained run {run['id']} (lite0, {args.size} px, {len(files)} photos, 1 frozen + 1 epoch, "
          f"accuracy {run['metrics']['accuracy']:.3f}) in {time.perf_counter() - started:.1f} s")
    return run


def measure(cases: dict[str, Callable[[], object]], calls: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call for each case, the cases interleaved call by call."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(calls):
        for name, fn in cases.items():
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="training size S (when training a model)")
    parser.add_argument("--per-label", type=int, default=10, help="training photos per class (3 classes)")
    parser.add_argument("--calls", type=int, default=50, help="timed calls of each case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each case first")
    parser.add_argument("--photo-mp", type=float, default=2.0, help="megapixels of the pasted photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", help="a data folder to train into, or reuse a run from (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # import-time noise, here and in the worker
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"settings: size {args.size}, {args.calls} calls after {args.warmup} warm-up, photo {args.photo_mp} MP, "
          f"{os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="bench-predict-data-") as tmp:
        store = Store(args.model_dir or tmp)
        try:
            run = trained_run(store, args)
        finally:
            store.close()
        model_path, sha = run["model_path"], run["model_sha256"]
        onnx_path, onnx_sha = run.get("onnx_path"), run.get("onnx_sha256")
        assert onnx_path, "this run has no ONNX copy: train a new one (no --model-dir)"
        size = int(run["params"]["size"])

        import torch

        from imgcls.ingest import decode_rgb
        from imgcls.predict import Predictor, decode_image, load_verified

        rng = np.random.default_rng([args.seed, 99])
        photo = make_photo("triangles", rng)
        scale = (args.photo_mp * 1e6 / (photo.width * photo.height)) ** 0.5
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        photo_bytes = jpeg(photo)
        small_bytes = jpeg(centre_square(photo, size))
        small_pil = decode_image(small_bytes)

        learn = load_verified(model_path, sha)
        xb = learn.dls.test_dl([small_pil], num_workers=0).one_batch()[0]
        assert tuple(xb.shape) == (1, 3, size, size), xb.shape
        predictor = Predictor()

        def bare() -> object:
            with torch.inference_mode():
                return learn.model(xb)

        cases = {
            f"baseline ({BASELINE}, 1x3x{size}x{size} tensor)": bare,
            f"Predictor.predict ({size}x{size} JPEG, {len(small_bytes) / 1e3:.0f} KB)":
                lambda: predictor.predict(model_path, sha, small_bytes),
            f"Predictor.predict ({photo.width}x{photo.height} photo JPEG, {len(photo_bytes) / 1e6:.2f} MB)":
                lambda: predictor.predict(model_path, sha, photo_bytes),
            f"learn.predict (fastai, {size}x{size} PILImage already decoded)": lambda: learn.predict(small_pil),
            "decode_image alone (the photo JPEG; part of Predictor.predict)": lambda: decode_image(photo_bytes),
            f"Predictor.predict with ONNX, the bot's path ({size}x{size} JPEG)":
                lambda: predictor.predict(model_path, sha, small_bytes, onnx_path=onnx_path, onnx_sha256=onnx_sha),
            f"Predictor.predict with ONNX, the bot's path ({photo.width}x{photo.height} photo JPEG)":
                lambda: predictor.predict(model_path, sha, photo_bytes, onnx_path=onnx_path, onnx_sha256=onnx_sha),
            "decode_rgb alone (the photo JPEG, DCT-scaled; part of the ONNX path)": lambda: decode_rgb(photo_bytes),
        }
        with learn.no_bar():
            times = measure(cases, args.calls, args.warmup)
            theirs = str(learn.predict(small_pil)[0])
        ours = predictor.predict(model_path, sha, small_bytes)
        bare_label = str(learn.dls.vocab[int(bare().argmax())])
        print(f"torch threads {torch.get_num_threads()}; the {size}x{size} image is classified as "
              f"'{ours.label}' by Predictor, '{theirs}' by learn.predict, '{bare_label}' by the bare model")

    base = statistics.median(next(iter(times.values())))
    print()
    for name, values in times.items():
        median = statistics.median(values)
        ratio = "" if name.startswith("baseline") else f", {median / base:.1f}x {BASELINE}"
        print(f"{name}: {median:.1f} ms median, p90 {p90(values):.1f} ms{ratio}")


if __name__ == "__main__":
    main()
