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
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import InvalidInput, NotReady, TrainingFailed
from .split import split_items
from .types import ARCHS, LITE_ARCHS, SUSPECT_METHODS, EpochMetrics, Progress, TopLoss, TrainItem, TrainResult, TrainSpec, to_plain

log = logging.getLogger(__name__)

MIN_IMAGES_PER_LABEL = 5
ITEM_TFMS = ("resize", "squish", "random_resized_crop")
ProgressFn = Callable[[Progress], None]


# Labelling functions are top-level: learn.export pickles them by name.
def item_path(item: TrainItem) -> str:
    return item.path


def item_label(item: TrainItem) -> str:
    return item.label


def item_is_valid(item: TrainItem) -> bool:
    return bool(item.valid)


def with_split(spec: TrainSpec) -> tuple[TrainItem, ...]:
    """The spec's items with their split sides; items without one (a spec made by hand) get the side a fresh
    workshop would give them (imgcls.split), from the file's path in place of its sha256."""
    if all(item.valid is not None for item in spec.items):
        return spec.items
    sides = split_items(((i.image_id, i.label, i.path) for i in spec.items if i.valid is None), spec.seed,
                        spec.valid_pct)
    return tuple(i if i.valid is not None else replace(i, valid=sides[i.image_id]) for i in spec.items)


def check_spec(spec: TrainSpec) -> None:
    """Refuse, with a message saying what to do, a dataset or setting that cannot train."""
    if spec.arch not in ARCHS:
        raise InvalidInput(f"Unknown architecture '{spec.arch}'. Choose one of: {', '.join(ARCHS)}.")
    if not 32 <= spec.size <= 1024:
        raise InvalidInput(f"Image size {spec.size} is out of range; use 32-1024 pixels (224 is typical).")
    if spec.epochs < 1 or spec.freeze_epochs < 0 or spec.total_epochs > 100:
        raise InvalidInput("Epochs must be between 1 and 100.")
    if spec.item_tfm not in ITEM_TFMS:
        raise InvalidInput(f"Unknown item transform '{spec.item_tfm}'; use one of: {', '.join(ITEM_TFMS)}.")
    if spec.bs < 2:
        raise InvalidInput("Batch size must be at least 2.")
    if not 0.05 <= spec.valid_pct <= 0.5:
        raise InvalidInput("The validation share must be between 0.05 and 0.5.")
    if spec.device not in ("auto", "cpu", "cuda"):
        raise InvalidInput(f"Unknown device '{spec.device}'; use auto, cpu or cuda.")
    if spec.suspects not in SUSPECT_METHODS:
        raise InvalidInput(f"Unknown way of checking images '{spec.suspects}'; use one of: {', '.join(SUSPECT_METHODS)}.")
    if not 2 <= spec.folds <= 10:
        raise InvalidInput("The number of folds must be between 2 and 10.")
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


def build_dataloaders(spec: TrainSpec, device: str, items: Optional[Sequence[TrainItem]] = None):
    """The seeds' DataBlock: ImageBlock/CategoryBlock, the split carried by the items (imgcls.split),
    Resize or RandomResizedCrop, aug_transforms."""
    import torch
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import FuncSplitter, Normalize
    from fastai.vision.augment import RandomResizedCrop, Resize, aug_transforms
    from fastai.vision.data import ImageBlock

    from .archs import LITE_STATS

    items = list(items if items is not None else with_split(spec))
    if spec.item_tfm == "random_resized_crop":
        item_tfms = RandomResizedCrop(spec.size, min_scale=0.5)
    else:  # "resize" crops the centre to a square, as the notebooks do; "squish" keeps the whole picture
        item_tfms = Resize(spec.size, method="squish" if spec.item_tfm == "squish" else "crop")
    batch_tfms = list(aug_transforms()) if spec.augment else []
    if spec.arch in LITE_ARCHS:  # fastai knows the torchvision stats; EfficientNet-Lite's are added here
        batch_tfms.append(Normalize.from_stats(*LITE_STATS))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=list(spec.labels), sort=False)),
        get_x=item_path, get_y=item_label, splitter=FuncSplitter(item_is_valid),
        item_tfms=item_tfms, batch_tfms=batch_tfms,
    )
    n_train = sum(1 for item in items if not item.valid)
    bs = max(2, min(spec.bs, n_train))
    return block.dataloaders(items, bs=bs, num_workers=spec.num_workers, device=torch.device(device))


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


def make_learner(spec: TrainSpec, dls, device: str):
    """vision_learner with the spec's architecture: channels_last on both devices, mixed precision on GPU."""
    from fastai.metrics import accuracy
    from fastai.vision.learner import vision_learner

    from . import archs

    arch, arch_kwargs = archs.resolve(spec.arch)
    learn = vision_learner(dls, arch, metrics=accuracy, path=Path(spec.out_dir or "."), **arch_kwargs)
    # channels_last: faster convolutions on GPU and CPU alike (about 1.5x for lite0 on CPU);
    # mixed precision on GPU only, plain float32 on CPU.
    return learn.to_channelslast(use_amp=device == "cuda")


def fine_tune(learn, spec: TrainSpec, cbs=()) -> None:
    import torch

    try:
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(spec.epochs, freeze_epochs=spec.freeze_epochs, cbs=list(cbs))
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingFailed("The GPU ran out of memory; train again with a smaller batch size or image size.") from exc


def apply_recipe(spec: TrainSpec, device: str, method: str = "none") -> tuple[TrainSpec, str]:
    """The spec with the automatic recipe's arch, size and epochs (those in spec.auto) for its training images on
    `device` (imgcls.recipe), and the recipe's one line saying what it chose and why. With the k-fold check the
    run fine-tunes `folds` models in all, so each gets that share of the budget."""
    from .recipe import choose

    n_train = sum(1 for item in spec.items if not item.valid)
    budget = spec.budget / (spec.folds if method == "kfold" else 1)
    recipe = choose(n_train, device, budget, bs=spec.bs, freeze_epochs=spec.freeze_epochs, max_epochs=spec.max_epochs,
                    arch=None if "arch" in spec.auto else spec.arch,
                    size=None if "size" in spec.auto else spec.size,
                    epochs=None if "epochs" in spec.auto else spec.epochs)
    return replace(spec, arch=recipe.arch, size=recipe.size, epochs=recipe.epochs, item_tfm=recipe.item_tfm,
                   auto=()), recipe.why


def train(spec: TrainSpec, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Fine-tune a pretrained model on the spec's images; export it and its interpretation; check every image."""
    emit = progress or (lambda event: None)
    started = time.monotonic()
    check_spec(spec)
    emit(Progress("stage", message="loading fastai"))
    warm_up()  # also the modules that add no_bar, fine_tune and to_channelslast to Learner
    import torch
    from fastai.callback.core import Callback
    from fastai.interpret import ClassificationInterpretation
    from fastai.torch_core import set_seed

    from . import interpret, scoring

    set_seed(spec.seed)  # python, numpy and torch, so a run can be repeated
    if spec.device != "cuda":
        from .recipe import host_cpus

        torch.set_num_threads(host_cpus())  # the cores this process may use, as the recipe's estimate assumes
    device = pick_device(spec.device)
    method = scoring.pick_method(spec.suspects, device)
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    emit(Progress("stage", message="preparing images"))
    items = with_split(spec)
    spec = replace(spec, items=items)
    recipe = ""
    if spec.auto:
        spec, recipe = apply_recipe(spec, device, method)
        emit(Progress("recipe", message=recipe))
    dls = build_dataloaders(spec, device, items)
    check_split(spec, dls)
    emit(Progress("stage", message=f"loading pretrained {spec.arch}"))
    learn = make_learner(spec, dls, device)

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

    fit_started = time.monotonic()
    fine_tune(learn, spec, [Report()])
    train_seconds = time.monotonic() - fit_started

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
    parent_predictions = compare_parent(spec, valid_items, emit)

    all_dl = dls.test_dl(list(items), bs=min(64, max(1, len(items))), num_workers=spec.num_workers)
    insample = None
    if method == "insample":  # the final model on every image, before export moves it to the CPU
        with learn.no_bar():
            insample = learn.get_preds(dl=all_dl)[0].float().numpy()
    valid_probs = {item.image_id: probs[i].float().numpy() for i, item in enumerate(valid_items)}

    emit(Progress("stage", message="exporting the model"))
    learn = learn.to_contiguous(to_fp32=True)
    learn.model.cpu()
    model_path = out_dir / "model.pkl"
    learn.export(model_path)
    onnx_path = ""
    emit(Progress("stage", message="exporting the model for light prediction (ONNX)"))
    try:
        from .onnx_model import export_onnx

        onnx_path = str(export_onnx(learn, out_dir / "model.onnx"))
    except Exception:  # noqa: BLE001 - predictions then use the .pkl, as before
        log.exception("run %s: the ONNX export failed; predictions will load the fastai model", spec.run_id)

    credits = dict(spec.credits)
    artefacts = [
        ("confusion", str(_write(out_dir / "confusion.png", interpret.render_confusion(labels, confusion)))),
        ("top_losses", str(_write(out_dir / "top_losses.png", interpret.render_top_losses(
            [interpret.Tile.from_top_loss(t, credits.get(t.image_id)) for t in top])))),
        ("learning_curve", str(_write(out_dir / "learning_curve.png", interpret.render_learning_curve(
            [to_plain(e) for e in epochs])))),
    ]
    if parent_predictions:
        from .compare import confusion_of

        before_labels, before_matrix = confusion_of(labels, [(item.label, p[1]) for item, p in
                                                             zip(valid_items, parent_predictions)])
        artefacts.append(("before_confusion", str(_write(out_dir / "before_confusion.png", interpret.render_confusion(
            before_labels, before_matrix, title=f"Run {spec.compare.run_id}'s model on these images")))))

    class FoldReport(Callback):
        """Progress while an extra model trains: its epoch, in the status line."""
        order = 60

        def __init__(self, title: str) -> None:
            self.title = title  # (Callback.name is fastai's own)

        def before_epoch(self):
            emit(Progress("stage", message=f"{self.title}, epoch {self.epoch + 1} of {spec.total_epochs}"))

    folds_done = [0]

    def fit_fold(held: list[bool]):
        """The run's recipe trained without the held-out items; their probabilities, in `items` order."""
        folds_done[0] += 1
        fold_items = [replace(item, valid=h) for item, h in zip(items, held)]
        fold_dls = build_dataloaders(spec, device, fold_items)
        fold_learn = make_learner(spec, fold_dls, device)
        fine_tune(fold_learn, spec, [FoldReport(f"checking every image's label: extra model {folds_done[0]} of "
                                                f"{spec.folds - 1}")])
        with fold_learn.no_bar():
            fold_probs, _ = fold_learn.get_preds(dl=fold_dls.valid)
        order = {item.image_id: n for n, item in enumerate(fold_dls.valid_ds.items)}
        wanted = [item.image_id for item, h in zip(items, held) if h]
        return fold_probs.float().numpy()[[order[i] for i in wanted]]

    # The model is safe on disk: a check that fails costs the suspects, never the run.
    scores, scoring_seconds, scoring_error = (), 0.0, ""
    if method != "none":
        try:
            scores, scoring_seconds = scoring.check_images(spec, method, dls=dls, all_dl=all_dl, device=device,
                                                           valid_probs=valid_probs, insample_probs=insample,
                                                           fit_fold=fit_fold, emit=emit)
        except Exception as exc:  # noqa: BLE001 - reported with the run
            log.exception("checking run %s's images failed", spec.run_id)
            scoring_error = (str(exc) if isinstance(exc, TrainingFailed) else
                             f"checking the images failed ({type(exc).__name__}: {exc})")
            emit(Progress("stage", message="checking the images failed; the model is fine"))
    return TrainResult(
        run_id=spec.run_id, arch=spec.arch, device=device, labels=labels, epochs=tuple(epochs),
        accuracy=correct / max(1, len(valid_items)), valid_loss=epochs[-1].valid_loss if epochs else float("nan"),
        confusion=confusion, most_confused=most_confused, top_losses=top,
        split=tuple((item.image_id, bool(item.valid)) for item in items),
        valid_predictions=valid_predictions, model_path=str(model_path), model_sha256=sha256_file(model_path),
        artefacts=tuple(artefacts), seconds=time.monotonic() - started,
        n_train=len(dls.train_ds), n_valid=len(valid_items),
        scores=scores, scoring_method=method, scoring_seconds=scoring_seconds, train_seconds=train_seconds,
        scoring_error=scoring_error,
        parent_predictions=parent_predictions,
        onnx_path=onnx_path, onnx_sha256=sha256_file(onnx_path) if onnx_path else "",
        chosen=(("arch", spec.arch), ("size", spec.size), ("epochs", spec.epochs),
                ("freeze_epochs", spec.freeze_epochs), ("item_tfm", spec.item_tfm), ("auto", ())),
        recipe=recipe,
    )


def compare_parent(spec: TrainSpec, valid_items: Sequence[TrainItem], emit: ProgressFn) -> tuple:
    """The compared run's model on this run's validation images: (image_id, predicted, probability) each."""
    if spec.compare is None or not valid_items:
        return ()
    from .errors import ModelRefused
    from .predict import fast_probabilities, load_verified

    emit(Progress("stage", message=f"scoring run {spec.compare.run_id}'s model on the same images"))
    try:
        before = load_verified(spec.compare.model_path, spec.compare.model_sha256)
        from fastai.vision.core import PILImage

        vocab = [str(v) for v in before.dls.vocab]
        out = []
        for start in range(0, len(valid_items), 32):
            chunk = valid_items[start:start + 32]
            probs = fast_probabilities(before, [PILImage.create(item.path) for item in chunk])
            for item, row in zip(chunk, probs):
                best = int(row.argmax())
                out.append((item.image_id, vocab[best], float(row[best])))
    except ModelRefused as exc:
        log.warning("before/after: run %s's model was not loaded: %s", spec.compare.run_id, exc)
        return ()
    except Exception:  # the comparison is a bonus: the new run stands without it
        log.exception("before/after: scoring run %s's model failed", spec.compare.run_id)
        return ()
    return tuple(out)


def _write(path: Path, data: bytes) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
