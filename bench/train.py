"""How long does a whole training job take compared with the seeds' notebook recipe?

    .venv/bin/python bench/train.py [--per-label 60] [--arch lite0] [--size 128] [--epochs 3]
                                    [--bs 32] [--seed 42] [--repeat 1] [--workdir DIR]

Generates (once, cached under --workdir) three classes of photo-like JPEGs of 1-3
megapixels and mixed aspect ratios, then runs, one after the other, each in its own
spawned process so both pay for process start-up and imports:

  baseline (notebook recipe): fastai's `verify_images` over the original files, then
      DataBlock(ImageBlock, CategoryBlock, get_image_files, RandomSplitter(0.2, seed),
      parent_label, Resize(size), aug_transforms()) on the ORIGINAL full-size files,
      vision_learner(dls, arch, metrics=accuracy) and fine_tune(epochs).
  imgcls: the product's job: a fresh Store, `collect.add_files` through a spawn
      ProcessPoolExecutor (each photo verified, de-duplicated and stored as a 512 px copy),
      then `runs.train_workshop(...)` in a `ProcessJobExecutor` worker, which also writes
      the interpretation plots and exports the model.

Both use the same architecture, image size, epochs (+1 frozen epoch), batch size, seed,
validation share, torch thread count and num_workers=0. The baseline lists its files in
sorted order (os.walk's order differs between file systems), so its split is reproducible;
imgcls splits per label with the same seed, so the two validation sets differ: the script
says how many validation images they share.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgcls.collect import add_files, folder_files  # noqa: E402
from imgcls.jobs import ProcessJobExecutor  # noqa: E402
from imgcls.runs import RunParams, train_workshop  # noqa: E402
from imgcls.store import Store  # noqa: E402
from imgcls.train import warm_up  # noqa: E402
from imgcls.types import ARCHS, EpochMetrics, ImageMeta, Progress  # noqa: E402

BASELINE = "notebook recipe: verify_images + DataBlock on originals"
OURS = "ingest to 512 px + train in worker"
GOAL_RATIO = 0.5
GOAL_POINTS = 2.0
DATASET_VERSION = 3  # bump when make_photo changes, so cached folders are regenerated

# Each class: the shape that defines it and a background tint. Tints are weak (the
# backgrounds overlap) and every image also carries small distractor shapes of any kind.
CLASSES = {
    "circles": ("ellipse", (200, 90, 70)),
    "squares": ("square", (80, 160, 80)),
    "triangles": ("triangle", (70, 100, 190)),
}
SHAPES = ("ellipse", "square", "triangle")
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)


# ---------------------------------------------------------------- the dataset


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: int, cy: int, r: int, fill: tuple, angle: float,
           outline: int = 0) -> None:
    edge = (20, 20, 20) if sum(fill) > 380 else (235, 235, 235)  # a contrasting rim, as objects have
    style = {"fill": fill, "outline": edge if outline else None, "width": outline}
    if kind == "ellipse":
        draw.ellipse((cx - r, cy - r * 0.9, cx + r, cy + r * 0.9), **style)
    else:
        draw.regular_polygon((cx, cy, r), 4 if kind == "square" else 3, rotation=angle, **style)


def make_photo(label: str, rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image of 1-3 megapixels: blotchy colour, texture, sensor noise, shapes."""
    kind, tint = CLASSES[label]
    megapixels = rng.uniform(1.0, 3.0)
    aspect = float(rng.choice(ASPECTS))
    width = int((megapixels * 1e6 * aspect) ** 0.5)
    height = int(megapixels * 1e6 / width)
    coarse = 0.6 * rng.integers(0, 256, (4, 5, 3)) + 0.4 * np.array(tint)
    img = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(0, 3))):  # distractors: small shapes of any kind, anywhere
        r = int(side * rng.uniform(0.02, 0.05))
        _shape(draw, SHAPES[int(rng.integers(len(SHAPES)))], int(rng.integers(r, width - r)),
               int(rng.integers(r, height - r)), r, tuple(int(c) for c in rng.integers(0, 256, 3)),
               float(rng.uniform(0, 360)))
    left, top = (width - side) // 2, (height - side) // 2
    for _ in range(int(rng.integers(1, 4))):  # the class's own shapes: large, inside the centre square
        r = int(side * rng.uniform(0.14, 0.28))  # (the square Resize keeps for validation)
        _shape(draw, kind, left + int(rng.integers(r, side - r)), top + int(rng.integers(r, side - r)), r,
               tuple(int(c) for c in rng.integers(0, 256, 3)), float(rng.uniform(-15, 15)),
               outline=max(2, side // 100))
    texture = rng.normal(0, 1, (height // 16 + 1, width // 16 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture, "F").resize((width, height), Image.Resampling.BILINEAR))
    pixels = (np.asarray(img, dtype=np.float32) + 14 * texture[..., None]
              + rng.normal(0, 5, (height, width, 1)).astype(np.float32)
              + rng.normal(0, 3, (height, width, 3)).astype(np.float32))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photo(path: str, label: str, seed: int, k: int, i: int) -> tuple[int, int]:
    """Top-level so a process pool can run it: one seeded photo, saved as JPEG quality 90."""
    img = make_photo(label, np.random.default_rng([seed, k, i]))
    img.save(path, "JPEG", quality=90)
    return img.width * img.height, os.path.getsize(path)


def dataset(workdir: Path, per_label: int, seed: int) -> Path:
    """root/<label>/<n>.jpg, generated once per (per_label, seed) and reused afterwards."""
    root = workdir / f"photos-v{DATASET_VERSION}-{len(CLASSES)}x{per_label}-seed{seed}"
    done = root / ".complete"
    if done.exists():
        info = json.loads(done.read_text())
        print(f"dataset: reusing {root} ({info['summary']})")
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    jobs = []
    for k, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        jobs += [(str(root / label / f"{i:04d}.jpg"), label, seed, k, i) for i in range(per_label)]
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        sizes = list(pool.map(write_photo, *zip(*jobs)))
    pixels, nbytes = (np.array(v, dtype=np.float64) for v in zip(*sizes))
    summary = (f"{len(jobs)} JPEGs, {pixels.mean() / 1e6:.1f} MP ({pixels.min() / 1e6:.1f}-{pixels.max() / 1e6:.1f}) "
               f"and {nbytes.mean() / 1e6:.2f} MB ({nbytes.min() / 1e6:.2f}-{nbytes.max() / 1e6:.2f}) on average, "
               f"{nbytes.sum() / 1e6:.0f} MB in all")
    done.write_text(json.dumps({"summary": summary}))
    print(f"dataset: generated {summary} in {time.perf_counter() - started:.1f} s into {root}")
    return root


# ---------------------------------------------------------------- the baseline, in its own process


@dataclass(frozen=True)
class Recipe:
    photos: str
    arch: str
    size: int
    epochs: int
    bs: int
    seed: int
    valid_pct: float = 0.2


def sorted_image_files(path: Path) -> list:
    """get_image_files, in sorted order: os.walk's order differs between file systems."""
    from fastai.data.transforms import get_image_files

    return get_image_files(path).sorted()


def notebook_recipe(recipe: Recipe, progress: Callable[[Progress], None]) -> dict[str, Any]:
    """The seeds' notebooks, cell by cell, on the original photos. Runs in its own spawned process."""
    progress(Progress("stage", message="loading fastai"))
    import torch
    import fastai.callback.progress  # noqa: F401 - adds Learner.no_bar
    import fastai.callback.schedule  # noqa: F401 - adds Learner.fine_tune
    from fastai.callback.core import Callback
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import Normalize, RandomSplitter, parent_label
    from fastai.metrics import accuracy
    from fastai.vision.augment import Resize, aug_transforms
    from fastai.vision.data import ImageBlock
    from fastai.vision.learner import vision_learner
    from fastai.vision.utils import verify_images

    # A notebook kernel on Linux forks; this spawned process would otherwise give verify_images'
    # pool spawned workers that each import fastai again, which no notebook pays for.
    multiprocessing.set_start_method("fork", force=True)
    torch.manual_seed(recipe.seed)  # as imgcls.train does
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = Path(recipe.photos)

    progress(Progress("stage", message="verifying images"))
    fns = sorted_image_files(path)
    failed = verify_images(fns)
    failed.map(Path.unlink)

    batch_tfms = aug_transforms()
    # the same model construction as imgcls.archs.resolve / train.build_dataloaders
    from imgcls.archs import LITE_STATS, resolve
    from imgcls.types import LITE_ARCHS

    arch, kwargs = resolve(recipe.arch)
    if recipe.arch in LITE_ARCHS:
        batch_tfms.append(Normalize.from_stats(*LITE_STATS))
    progress(Progress("stage", message="preparing images"))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=sorted_image_files,
        splitter=RandomSplitter(valid_pct=recipe.valid_pct, seed=recipe.seed),
        get_y=parent_label,
        item_tfms=Resize(recipe.size),
        batch_tfms=batch_tfms,
    )
    dls = block.dataloaders(path, bs=recipe.bs, num_workers=0)
    progress(Progress("stage", message=f"loading pretrained {recipe.arch}"))
    learn = vision_learner(dls, arch, metrics=accuracy, **kwargs)

    done: list[float] = []

    class Report(Callback):
        order = 60

        def before_epoch(self):
            self.t0 = time.monotonic()
            progress(Progress("epoch_start", epoch=len(done)))

        def after_epoch(self):  # fine_tune fits twice: count epochs across both
            train_loss, valid_loss, acc = (float(v) for v in self.recorder.values[-1][:3])
            metrics = EpochMetrics(len(done), "frozen" if not done else "unfrozen", train_loss, valid_loss, acc,
                                   time.monotonic() - self.t0)
            done.append(acc)
            progress(Progress("epoch_end", epoch=metrics.epoch, metrics=metrics))

    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(recipe.epochs, cbs=[Report()])
    return {
        "accuracy": float(learn.recorder.values[-1][2]),
        "valid": sorted(str(p) for p in dls.valid_ds.items),
        "n_train": len(dls.train_ds),
        "failed": len(failed),
    }


# ---------------------------------------------------------------- the two sides, timed from here


@dataclass(frozen=True)
class Timing:
    seconds: float
    accuracy: float
    valid: tuple[str, ...]  # original paths of the validation images
    detail: str = ""
    phases: str = ""  # where the time went, from the job's progress events
    ingest_s: float = 0.0
    train_s: float = 0.0


PHASES = {"loading fastai": "imports", "verifying images": "verify_images", "preparing images": "dataloaders",
          "training": "fine_tune", "interpreting": "interpret", "exporting the model": "export+plots"}


class Trace:
    """A progress callback: prints each epoch and times the job's phases as the events arrive."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.marks: list[tuple[float, str]] = [(time.perf_counter(), "start-up")]

    def __call__(self, ev: Progress) -> None:
        if ev.kind == "stage":
            name = "model" if ev.message.startswith("loading pretrained") else PHASES.get(ev.message, ev.message)
            self.marks.append((time.perf_counter(), name))
        elif ev.kind == "epoch_start" and ev.epoch == 0:
            self.marks.append((time.perf_counter(), "fine_tune"))
        elif ev.kind == "epoch_end" and ev.metrics is not None:
            m = ev.metrics
            print(f"    {self.side} epoch {m.epoch} ({m.phase}): train_loss {m.train_loss:.4f}  "
                  f"valid_loss {m.valid_loss:.4f}  accuracy {m.accuracy:.3f}  ({m.seconds:.1f} s)", flush=True)

    def phases(self) -> str:
        marks = self.marks + [(time.perf_counter(), "")]
        return ", ".join(f"{name} {b - a:.1f} s" for (a, name), (b, _) in zip(marks, marks[1:]))


def _baseline_child(recipe: Recipe, events: Any) -> None:
    try:
        events.put(("result", notebook_recipe(recipe, lambda ev: events.put(("progress", ev)))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        events.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_baseline(photos: Path, args: argparse.Namespace) -> Timing:
    """The recipe in a fresh spawned process. Not a ProcessJobExecutor: its workers are daemonic,
    and a daemonic process may not start the process pool that verify_images uses."""
    recipe = Recipe(str(photos), args.arch, args.size, args.epochs, args.bs, args.seed)
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    trace = Trace("baseline")
    events = context.Queue()
    proc = context.Process(target=_baseline_child, args=(recipe, events))
    proc.start()
    while True:
        try:
            kind, value = events.get(timeout=1.0)
        except queue.Empty:
            if proc.is_alive():
                continue
            raise SystemExit(f"the baseline process died (exit code {proc.exitcode})") from None
        if kind == "progress":
            trace(value)
            continue
        break
    phases = trace.phases()
    proc.join()
    seconds = time.perf_counter() - started
    if kind == "error":
        raise SystemExit(f"the baseline failed: {value}")
    result = value
    return Timing(seconds, result["accuracy"], tuple(result["valid"]), phases=phases,
                  detail=f"{result['n_train']} train / {len(result['valid'])} valid, "
                         f"{result['failed']} failed verify_images")


def run_imgcls(photos: Path, args: argparse.Namespace) -> Timing:
    with tempfile.TemporaryDirectory(prefix="bench-train-data-") as data:
        started = time.perf_counter()
        # As the bot does at start-up: the executor warms a spare worker (fastai imported)
        # while the images are ingested.
        executor = ProcessJobExecutor(warm=warm_up)
        store = Store(data)
        try:
            labels = list(CLASSES)
            wid = store.create_workshop("bench", labels)["id"]
            files = folder_files(photos, labels)
            workers = max(1, min(os.cpu_count() or 1, len(files)))
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                added = add_files(store, wid, files, meta=ImageMeta(source="folder"), pool=pool)
            ingested = time.perf_counter()
            params = RunParams(arch=args.arch, epochs=args.epochs, size=args.size, bs=args.bs, seed=args.seed)
            trace = Trace("imgcls")
            run = train_workshop(store, wid, params, executor, progress=trace)
            phases = trace.phases()
            finished = time.perf_counter()
            if run["status"] != "done":
                raise SystemExit(f"imgcls run {run['status']}: {run['error']}")
            by_id = {row["id"]: row["source_url"] for row in store.images(wid)}
            valid = tuple(sorted(by_id[i] for i, is_valid in run["snapshot"]["split"] if is_valid))
            refused = sum(1 for a in added if not a.outcome.ok)
            m = run["metrics"]
        finally:
            store.close()
            executor.shutdown()
    return Timing(finished - started, m["accuracy"], valid, ingest_s=ingested - started, train_s=finished - ingested,
                  phases=phases, detail=f"{m['n_train']} train / {m['n_valid']} valid, {refused} refused at ingest")


def describe(runs: list[Timing]) -> tuple[float, float]:
    """(median seconds, mean accuracy) over repeats."""
    return statistics.median(t.seconds for t in runs), statistics.fmean(t.accuracy for t in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--per-label", type=int, default=60, help="photos per class (3 classes)")
    parser.add_argument("--arch", default="lite0", choices=ARCHS,
                        help="resnet18/34 need their torchvision weights in TORCH_HOME (no network here)")
    parser.add_argument("--size", type=int, default=128,
                        help="training image size (128 keeps the default run within ~8 minutes on 2 CPUs; "
                             "real workshops use 224)")
    parser.add_argument("--epochs", type=int, default=3, help="unfrozen epochs of fine_tune (after 1 frozen)")
    parser.add_argument("--bs", type=int, default=32, help="batch size")
    parser.add_argument("--seed", type=int, default=42, help="dataset, splitter and torch seed")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each side this many times (median time and mean accuracy reported)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "imgcls-bench-train"),
                        help="where the generated photos are cached between runs")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # the workers' import-time noise
    print(f"settings: {len(CLASSES)} classes x {args.per_label} photos, arch {args.arch}, size {args.size}, "
          f"epochs 1 frozen + {args.epochs}, bs {args.bs}, seed {args.seed}, repeat {args.repeat}, "
          f"{os.cpu_count()} CPUs, num_workers 0")
    if not args.arch.startswith("lite"):  # fail now, not after the baseline has run, when the weights are not cached
        from imgcls.archs import check_torchvision_weights
        from imgcls.errors import ImgclsError

        try:
            check_torchvision_weights(args.arch)
        except ImgclsError as exc:
            raise SystemExit(f"error: {exc}") from None
    photos = dataset(Path(args.workdir), args.per_label, args.seed)
    if os.getloadavg()[0] > 0.5:
        print(f"note: the load average is {os.getloadavg()[0]:.1f}: other processes compete for the CPUs and "
              "can slow either side by several times; compare runs on a quiet machine, or use --repeat")

    baseline: list[Timing] = []
    ours: list[Timing] = []
    for n in range(args.repeat):
        # Alternate which side goes first, so neither always runs on a warmer machine.
        order = [("baseline", run_baseline, baseline), ("imgcls", run_imgcls, ours)]
        for name, fn, results in (order if n % 2 == 0 else order[::-1]):
            load = os.getloadavg()[0]
            print(f"  [{n + 1}/{args.repeat}] {name}… (load average {load:.1f})", flush=True)
            t = fn(photos, args)
            results.append(t)
            split = f", ingest {t.ingest_s:.1f} s + train {t.train_s:.1f} s" if name == "imgcls" else ""
            print(f"  [{n + 1}/{args.repeat}] {name}: {t.seconds:.1f} s{split}, accuracy {t.accuracy:.3f} "
                  f"({t.detail}; load average {load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
            print(f"        {'training job' if name == 'imgcls' else 'recipe'}: {t.phases}", flush=True)

    common = len(set(baseline[0].valid) & set(ours[0].valid))
    n_valid = len(ours[0].valid)
    base_s, base_acc = describe(baseline)
    ours_s, ours_acc = describe(ours)
    ingest_s = statistics.median(t.ingest_s for t in ours)
    train_s = statistics.median(t.train_s for t in ours)
    ratio, points = ours_s / base_s, (ours_acc - base_acc) * 100
    print()
    print(f"baseline ({BASELINE}): {base_s:.1f} s, accuracy {base_acc:.3f}")
    print(f"imgcls ({OURS}): {ours_s:.1f} s, accuracy {ours_acc:.3f}")
    print(f"  of which ingest {ingest_s:.1f} s, train {train_s:.1f} s")
    print(f"ratio: {ratio:.2f}x baseline time; accuracy {points:+.1f} points "
          f"({n_valid} validation images, one image = {100 / max(1, n_valid):.1f} points; "
          f"{common} of them also in the baseline's validation set)")
    print(f"goal: at most {GOAL_RATIO}x and within {GOAL_POINTS:.0f} points: "
          f"time {'met' if ratio <= GOAL_RATIO else 'NOT met'}, "
          f"accuracy {'met' if abs(points) <= GOAL_POINTS else 'NOT met'}")


if __name__ == "__main__":
    main()
