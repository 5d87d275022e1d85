"""The training job: fastai transfer learning on a frozen TrainSpec, returning a TrainResult.

`train(spec, progress)` is meant to run in a worker process (see `imgcls.jobs`): fastai
and torch are imported inside it, so importing this module stays cheap. `check_spec` is
pure Python, so callers can refuse a hopeless dataset before starting a process.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from .errors import InvalidInput, NotReady, TrainingFailed
from .types import ARCHS, EpochMetrics, Progress, TopLoss, TrainItem, TrainResult, TrainSpec

log = logging.getLogger(__name__)

MIN_IMAGES_PER_LABEL = 5
ProgressFn = Callable[[Progress], None]


# Labelling functions are top-level: learn.export pickles them by name.
def item_path(item: TrainItem) -> str:
    return item.path


def item_label(item: TrainItem) -> str:
    return item.label


class StratifiedRandomSplitter:
    """fastai's seeded RandomSplitter applied within each label, so every label gets its share of
    validation images (a plain random split of a small workshop can leave a label with none)."""

    def __init__(self, valid_pct: float = 0.2, seed: int = 42) -> None:
        self.valid_pct, self.seed = valid_pct, seed

    def __call__(self, items) -> tuple[list[int], list[int]]:
        from fastai.data.transforms import RandomSplitter

        by_label: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_label.setdefault(item.label, []).append(i)
        train_idx, valid_idx = [], []
        for indices in by_label.values():
            t, v = RandomSplitter(valid_pct=self.valid_pct, seed=self.seed)(indices)
            train_idx += [indices[i] for i in t]
            valid_idx += [indices[i] for i in v]
        return sorted(train_idx), sorted(valid_idx)


def check_spec(spec: TrainSpec) -> None:
    """Refuse, with a message saying what to do, a dataset or setting that cannot train."""
    if spec.arch not in ARCHS:
        raise InvalidInput(f"Unknown architecture '{spec.arch}'. Choose one of: {', '.join(ARCHS)}.")
    if not 32 <= spec.size <= 1024:
        raise InvalidInput(f"Image size {spec.size} is out of range; use 32-1024 pixels (224 is typical).")
    if spec.epochs < 1 or spec.freeze_epochs < 0 or spec.total_epochs > 100:
        raise InvalidInput("Epochs must be between 1 and 100.")
    if spec.bs < 2:
        raise InvalidInput("Batch size must be at least 2.")
    if not 0.05 <= spec.valid_pct <= 0.5:
        raise InvalidInput("The validation share must be between 0.05 and 0.5.")
    if spec.device not in ("auto", "cpu", "cuda"):
        raise InvalidInput(f"Unknown device '{spec.device}'; use auto, cpu or cuda.")
    counts = Counter(item.label for item in spec.items)
    used = [label for label in spec.labels if counts[label]]
    if len(used) < 2:
        raise NotReady(f"Training needs at least 2 labels with images; this workshop has {len(used)}. Add a label and images.")
    short = {label: counts[label] for label in spec.labels if counts[label] < MIN_IMAGES_PER_LABEL}
    if short:
        listing = ", ".join(f"{label} ({n})" for label, n in short.items())
        raise NotReady(f"Every label needs at least {MIN_IMAGES_PER_LABEL} images; too few: {listing}. Add or download more.")
    stray = set(counts) - set(spec.labels)
    if stray:
        raise InvalidInput(f"Images carry labels that are not in the workshop: {', '.join(sorted(stray))}.")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise NotReady("A GPU was requested but CUDA is not available on this host; use device 'cpu' or 'auto'.")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def build_dataloaders(spec: TrainSpec, device: str):
    """The seeds' DataBlock: ImageBlock/CategoryBlock, a seeded random split (per label), Resize or
    RandomResizedCrop, aug_transforms."""
    import torch
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import RandomResizedCrop, Resize, aug_transforms
    from fastai.vision.data import ImageBlock

    from .archs import LITE0_STATS

    item_tfms = RandomResizedCrop(spec.size, min_scale=0.5) if spec.item_tfm == "random_resized_crop" else Resize(spec.size)
    batch_tfms = list(aug_transforms()) if spec.augment else []
    if spec.arch == "lite0":  # fastai knows the torchvision stats; lite0's are added here
        batch_tfms.append(Normalize.from_stats(*LITE0_STATS))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(spec.labels), sort=False)),
        get_x=item_path, get_y=item_label,
        splitter=StratifiedRandomSplitter(valid_pct=spec.valid_pct, seed=spec.seed),
        item_tfms=item_tfms, batch_tfms=batch_tfms,
    )
    n_train = int(len(spec.items) * (1 - spec.valid_pct))
    bs = max(2, min(spec.bs, n_train))
    return block.dataloaders(list(spec.items), bs=bs, num_workers=spec.num_workers, device=torch.device(device))


def check_split(spec: TrainSpec, dls) -> None:
    valid = Counter(item.label for item in dls.valid_ds.items)
    missing = [label for label in spec.labels if not valid[label]]
    if missing:
        raise NotReady(
            f"No validation image for: {', '.join(missing)}. Add more images to those labels "
            f"(or raise the validation share from {spec.valid_pct:.0%})."
        )


def warm_up() -> None:
    """Import what a training job needs; a job executor runs this in its spare process ahead of time."""
    import fastai.callback.channelslast  # noqa: F401
    import fastai.callback.progress  # noqa: F401
    import fastai.callback.schedule  # noqa: F401
    import fastai.interpret  # noqa: F401
    import fastai.vision.learner  # noqa: F401
    import timm  # noqa: F401

    from . import archs, interpret  # noqa: F401


def train(spec: TrainSpec, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Fine-tune a pretrained model on the spec's images; export it and its interpretation."""
    emit = progress or (lambda event: None)
    started = time.monotonic()
    check_spec(spec)
    emit(Progress("stage", message="loading fastai"))
    warm_up()  # also the modules that add no_bar, fine_tune and to_channelslast to Learner
    import torch
    from fastai.callback.core import Callback
    from fastai.interpret import ClassificationInterpretation
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    from fastai.vision.learner import vision_learner

    from . import archs, interpret

    set_seed(spec.seed)  # python, numpy and torch, so a run can be repeated
    if spec.device != "cuda":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    device = pick_device(spec.device)
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    emit(Progress("stage", message="preparing images"))
    dls = build_dataloaders(spec, device)
    check_split(spec, dls)
    arch, arch_kwargs = archs.resolve(spec.arch)
    emit(Progress("stage", message=f"loading pretrained {spec.arch}"))
    learn = vision_learner(dls, arch, metrics=accuracy, path=out_dir, **arch_kwargs)
    # channels_last: faster convolutions on GPU and CPU alike (about 1.5x for lite0 on CPU);
    # mixed precision on GPU only, plain float32 on CPU.
    learn = learn.to_channelslast(use_amp=device == "cuda")

    total = spec.total_epochs
    epochs: list[EpochMetrics] = []

    class Report(Callback):
        order = 60  # after the Recorder has logged the epoch

        def before_epoch(self):
            self.t0 = time.monotonic()
            self.last = 0.0
            emit(Progress("epoch_start", epoch=len(epochs), total_epochs=total, total_batches=len(self.dls.train)))

        def after_batch(self):
            now = time.monotonic()
            if self.training and now - self.last >= 0.5:
                self.last = now
                emit(Progress("batch", epoch=len(epochs), total_epochs=total, batch=self.iter + 1,
                              total_batches=self.n_iter))

        def after_epoch(self):
            train_loss, valid_loss, acc = (float(v) for v in self.recorder.values[-1][:3])
            metrics = EpochMetrics(epoch=len(epochs), phase="frozen" if len(epochs) < spec.freeze_epochs else "unfrozen",
                                   train_loss=train_loss, valid_loss=valid_loss, accuracy=acc,
                                   seconds=time.monotonic() - self.t0)
            epochs.append(metrics)
            emit(Progress("epoch_end", epoch=metrics.epoch, total_epochs=total, metrics=metrics))

    try:
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(spec.epochs, freeze_epochs=spec.freeze_epochs, cbs=[Report()])
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingFailed("The GPU ran out of memory; train again with a smaller batch size or image size.") from exc

    emit(Progress("stage", message="interpreting"))
    with learn.no_bar():
        interp = ClassificationInterpretation.from_learner(learn)
        matrix = interp.confusion_matrix()
        probs, _ = learn.get_preds(dl=interp.dl)
    labels = tuple(str(v) for v in dls.vocab)
    confusion = tuple(tuple(int(v) for v in row) for row in matrix)
    # what interp.most_confused(min_val=1) returns, read off the same matrix instead of predicting again
    most_confused = tuple(sorted(((labels[i], labels[j], confusion[i][j]) for i in range(len(labels))
                                  for j in range(len(labels)) if i != j and confusion[i][j] >= 1),
                                 key=lambda t: t[2], reverse=True))
    valid_items = list(interp.dl.items)
    pred_idx = probs.argmax(dim=1)
    k = min(spec.top_losses, len(valid_items))
    losses, idxs = interp.top_losses(k)
    top = tuple(
        TopLoss(image_id=valid_items[i].image_id, path=valid_items[i].path, actual=valid_items[i].label,
                predicted=labels[int(pred_idx[i])], probability=float(probs[i, pred_idx[i]]), loss=float(loss))
        for loss, i in zip(losses.tolist(), idxs.tolist())
    )
    valid_predictions = tuple(
        (item.image_id, labels[int(pred_idx[i])], float(probs[i, pred_idx[i]])) for i, item in enumerate(valid_items)
    )
    correct = sum(1 for i, item in enumerate(valid_items) if labels[int(pred_idx[i])] == item.label)

    emit(Progress("stage", message="exporting the model"))
    learn = learn.to_contiguous(to_fp32=True)
    learn.model.cpu()
    model_path = out_dir / "model.pkl"
    learn.export(model_path)

    credits = dict(spec.credits)
    artefacts = (
        ("confusion", str(_write(out_dir / "confusion.png", interpret.render_confusion(labels, confusion)))),
        ("top_losses", str(_write(out_dir / "top_losses.png", interpret.render_top_losses(
            [interpret.Tile.from_top_loss(t, credits.get(t.image_id)) for t in top])))),
    )
    valid_ids = {item.image_id for item in valid_items}
    return TrainResult(
        run_id=spec.run_id, arch=spec.arch, device=device, labels=labels, epochs=tuple(epochs),
        accuracy=correct / max(1, len(valid_items)), valid_loss=epochs[-1].valid_loss if epochs else float("nan"),
        confusion=confusion, most_confused=most_confused, top_losses=top,
        split=tuple((item.image_id, item.image_id in valid_ids) for item in spec.items),
        valid_predictions=valid_predictions, model_path=str(model_path), model_sha256=sha256_file(model_path),
        artefacts=artefacts, seconds=time.monotonic() - started,
        n_train=len(dls.train_ds), n_valid=len(valid_items),
    )


def _write(path: Path, data: bytes) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
