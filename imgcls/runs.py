"""A training run from the workshop's point of view: snapshot the dataset, train, record.

    run_id, spec = prepare_run(store, workshop_id, RunParams(arch="lite0", epochs=3))
    future = executor.submit(train, spec, progress=..., timeout=...)
    record_outcome(store, run_id, future)    # after it finishes: done, failed or cancelled

Every image keeps its side of the split from run to run (imgcls.split); a run with a
parent (a retrain) also scores the parent's model on its validation images, so the
before/after rests on the same images (imgcls.compare). The job's image scores are stored
with the run (imgcls.suspects).
"""
from __future__ import annotations

import logging
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from .credits import credit_line
from .errors import ImgclsError, JobCancelled
from .split import SplitBook
from .store import Store
from .suspects import SuspectBook
from .train import check_spec, train
from .types import CompareTo, Progress, TrainItem, TrainSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunParams:
    arch: str = "lite0"
    epochs: int = 3
    freeze_epochs: int = 1
    size: int = 224
    bs: int = 32
    valid_pct: float = 0.2
    seed: int = 42
    device: str = "auto"
    item_tfm: str = "resize"
    augment: bool = True
    suspects: str = "auto"  # how the job checks every image: auto, kfold, embed, insample, none
    folds: int = 4
    auto: tuple[str, ...] = ()  # of "arch", "size", "epochs": chosen in the job by the automatic recipe
    budget: float = 300.0  # the automatic recipe's fine_tune time budget, in seconds
    max_epochs: int = 100  # the most epochs the automatic recipe may choose (the bot's MAX_EPOCHS)


def build_spec(store: Store, workshop_id: int, params: RunParams, run_id: Optional[int] = None) -> TrainSpec:
    """The workshop's active images as a TrainSpec, each with its lasting side of the split; checked, so a
    hopeless dataset fails here."""
    rows = store.images(workshop_id)
    sides = SplitBook(store).assign(workshop_id, rows, seed=params.seed, valid_pct=params.valid_pct)
    items = tuple(TrainItem(r["id"], str(store.image_path(r)), r["label"], valid=sides[r["id"]]) for r in rows)
    credits = tuple((r["id"], line) for r in rows if (line := credit_line(r, short=True)))
    fields = {**vars(params), "auto": tuple(params.auto)}  # a list once read back from a run's JSON
    spec = TrainSpec(items=items, labels=tuple(store.labels(workshop_id)), out_dir="", run_id=run_id,
                     credits=credits, **fields)
    check_spec(spec)
    return spec


def prepare_run(store: Store, workshop_id: int, params: RunParams, *, requested_by: Optional[str] = None,
                parent_run_id: Optional[int] = None, channel_id: Optional[int] = None) -> tuple[int, TrainSpec]:
    """Check the dataset, create a queued run and record the exact snapshot it will train on."""
    compare = None
    if parent_run_id is not None:
        parent = store.run(parent_run_id)
        if parent["status"] == "done" and parent["model_path"] and parent["model_sha256"]:
            compare = CompareTo(parent_run_id, parent["model_path"], parent["model_sha256"])
    spec = build_spec(store, workshop_id, params)
    run_id = store.create_run(workshop_id, vars(params), requested_by=requested_by, parent_run_id=parent_run_id,
                              channel_id=channel_id)
    spec = replace(spec, run_id=run_id, out_dir=str(store.run_dir(run_id)), compare=compare)
    store.record_snapshot(run_id, ((i.image_id, i.label) for i in spec.items))
    return run_id, spec


def record_outcome(store: Store, run_id: int, future: Future) -> dict[str, Any]:
    """Store what a finished job produced; returns the run row. Never raises for a failed job."""
    try:
        result = future.result()
    except (CancelledError, JobCancelled):
        store.mark_run(run_id, "cancelled", error="cancelled")
    except ImgclsError as exc:
        store.mark_run(run_id, "failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded, then surfaced by the caller
        log.exception("run %s failed", run_id)
        store.mark_run(run_id, "failed", error=f"unexpected error: {type(exc).__name__}: {exc}")
    else:
        with store.transaction():  # the run and its image scores land together
            store.finish_run(run_id, result)
            SuspectBook(store).record(run_id, result.scores)
    return store.run(run_id)


def train_workshop(store: Store, workshop_id: int, params: RunParams, executor: Any, *,
                   progress: Optional[Callable[[Progress], None]] = None, timeout: Optional[float] = None,
                   requested_by: Optional[str] = None, parent_run_id: Optional[int] = None) -> dict[str, Any]:
    """Train synchronously in a worker process (the CLI's path); returns the finished run row."""
    run_id, spec = prepare_run(store, workshop_id, params, requested_by=requested_by, parent_run_id=parent_run_id)
    store.mark_run(run_id, "running")
    future = executor.submit(train, spec, progress=progress, timeout=timeout)
    try:
        future.result()
    except BaseException as exc:  # KeyboardInterrupt included: stop the job, record it
        if not isinstance(exc, Exception):
            future.cancel()
            record_outcome(store, run_id, future)
            raise
    return record_outcome(store, run_id, future)
