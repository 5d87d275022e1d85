"""Check every image of a run: out-of-fold probabilities, ranked with cleanlab. Runs inside the training job.

    probs, features = out_of_fold(spec, learn, dls, device, method="embed", emit=emit)
    scores = rank(spec, probs, features)            # tuple[ImageScore, ...], cleanlab's Datalab

No image's probabilities come from a model that was trained on its label:
- "kfold": the run's own model gives its validation images' probabilities, and K-1 more
  fine-tunes with the run's recipe each hold out one part of the training images;
- "embed": embeddings from the *pretrained* backbone (it has never seen a workshop label),
  then k-fold logistic regression (scikit-learn);
- "insample": the final model on every image. It trained on most of them, so this is the
  baseline the other two are measured against (what fastai's ImageClassifierCleaner shows).

The same pretrained embeddings give cleanlab's outliers (an image unlike any other) and
near-duplicates (which perceptual hashes miss). torch, fastai, scikit-learn and cleanlab
are imported inside the functions: importing this module stays cheap.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Sequence

from .errors import InvalidInput
from .split import split_key
from .types import ImageScore, Progress, TrainItem, TrainSpec

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]
METHODS = ("kfold", "embed", "insample")


def pick_method(requested: str, device: str) -> str:
    """The method a run uses: the requested one, or for "auto" the default measured by bench/cleaning.py."""
    if requested in METHODS or requested == "none":
        return requested
    if requested != "auto":
        raise InvalidInput(f"Unknown way of checking images '{requested}'; use auto, kfold, embed, insample or none.")
    return DEFAULT_METHOD.get(device, DEFAULT_METHOD["cpu"])


#: Chosen by bench/cleaning.py (bench/README.md): on real clip art the embeddings found more of the flipped
#: labels than k-fold fine-tunes with the run's recipe, at about a tenth of the cost. K-fold stays one
#: setting away (SUSPECT_METHOD=kfold), for a GPU host with a recipe that learns more than this one.
DEFAULT_METHOD = {"cuda": "embed", "cpu": "embed"}


# ---------------------------------------------------------------- embeddings


def pretrained_body(arch: str):
    """The architecture's pretrained body (no head), as vision_learner cuts it: it has seen no workshop label."""
    from fastai.vision.learner import create_body

    from . import archs

    model_fn, kwargs = archs.resolve(arch)
    return create_body(model_fn(pretrained=True), cut=kwargs.get("cut", -2))


def taps(body, arch: str) -> list:
    """The layers whose pooled outputs make an image's embedding: the last stages and the body's end.
    Mid-level features transfer better than the last layer alone to pictures unlike ImageNet's (clip
    art, drawings): about 2 points more recall of flipped labels in bench/cleaning.py's data."""
    children = list(body.children())
    if arch.startswith("lite"):  # timm EfficientNet-Lite: conv_stem, bn1, blocks (7 stages), conv_head, bn2
        return list(children[2].children())[-4:] + [children[-1]]
    return children[-3:]  # torchvision ResNet: ..., layer2, layer3, layer4


def embeddings(body, dl, device: str, arch: str):
    """Pooled features of the tapped layers for every item of `dl` (validation transforms), averaged with
    a flipped copy of each image."""
    import torch

    body = body.to(device).eval().to(memory_format=torch.channels_last)
    pooled: list = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: pooled.append(out.float().mean((2, 3))))
             for layer in taps(body, arch)]
    out = []
    try:
        with torch.inference_mode():
            for batch in dl:
                xb = (batch[0] if isinstance(batch, (tuple, list)) else batch).as_subclass(torch.Tensor)
                xb = xb.contiguous(memory_format=torch.channels_last)
                views = []
                for x in (xb, torch.flip(xb, dims=[3])):
                    pooled.clear()
                    body(x)
                    views.append(torch.cat(pooled, dim=1))
                out.append(((views[0] + views[1]) / 2).cpu())
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(out).numpy()


# ---------------------------------------------------------------- out-of-fold probabilities


def folds_for(items: Sequence[TrainItem], k: int, seed: int) -> list[int]:
    """Fold 0 is the run's validation side; the training side is dealt round-robin, per label, into 1..k-1."""
    fold = [0] * len(items)
    by_label: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if not item.valid:
            by_label.setdefault(item.label, []).append(i)
    for indices in by_label.values():
        indices.sort(key=lambda i: split_key(seed + 7919, items[i].path))
        for n, i in enumerate(indices):
            fold[i] = 1 + n % (k - 1)
    return fold


def logistic_oof(features, labels, seed: int, folds: int = 5):
    """Out-of-fold class probabilities from k-fold logistic regression on (standardised) embeddings."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    smallest = int(np.bincount(labels).min())
    k = max(2, min(folds, smallest))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    probs = cross_val_predict(model, features, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")
    return probs


def out_of_fold(spec: TrainSpec, method: str, *, valid_probs, insample_probs, features, fit_fold: Callable,
                emit: ProgressFn):
    """Probabilities (rows in spec.items order, columns in spec.labels order) that never saw the row's label.

    valid_probs: the run's model on its validation items, {image_id: row}; insample_probs: the
    run's model on every item; fit_fold(items, flags) trains the run's recipe on the unflagged
    items and returns probabilities for the flagged ones.
    """
    import numpy as np

    items, vocab = spec.items, list(spec.labels)
    labels = np.array([vocab.index(item.label) for item in items])
    if method == "insample":
        return np.asarray(insample_probs)
    if method == "embed":
        emit(Progress("stage", message="checking every image's label (logistic regression on embeddings)"))
        return logistic_oof(features, labels, spec.seed)
    if method != "kfold":
        raise InvalidInput(f"Unknown way of checking images '{method}'.")
    k = max(2, spec.folds)
    fold = folds_for(items, k, spec.seed)
    probs = np.zeros((len(items), len(vocab)), dtype="float64")
    for i, item in enumerate(items):
        if fold[i] == 0:
            probs[i] = valid_probs[item.image_id]
    for f in range(1, k):
        emit(Progress("stage", message=f"checking every image's label: extra model {f} of {k - 1}"))
        held = [fold[i] == f for i in range(len(items))]
        if not any(held):
            continue
        probs[np.array(held)] = fit_fold(held)
    return probs


# ---------------------------------------------------------------- ranking with cleanlab


def rank(spec: TrainSpec, probs, features) -> tuple[ImageScore, ...]:
    """cleanlab's Datalab on the out-of-fold probabilities and the embeddings: label issues, outliers and
    near-duplicates, one ImageScore per item."""
    import warnings

    import numpy as np

    os.environ.setdefault("TQDM_DISABLE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cleanlab import Datalab

        items, vocab = spec.items, list(spec.labels)
        labels = np.array([vocab.index(item.label) for item in items])
        probs = np.asarray(probs, dtype="float64")
        probs = probs / probs.sum(axis=1, keepdims=True)
        lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
        # one process: cleanlab's pool would need fork-shared globals, and a job's process may be daemonic
        issue_types: dict[str, Any] = {"label": {"clean_learning_kwargs": {"find_label_issues_kwargs": {"n_jobs": 1}}}}
        if features is not None and len(items) > 10:
            issue_types.update({"outlier": {"k": min(10, len(items) - 1)},
                                "near_duplicate": {"k": min(10, len(items) - 1)}})
        lab.find_issues(pred_probs=probs, features=None if features is None else np.asarray(features, "float32"),
                        issue_types=issue_types)
        issues = lab.get_issues()
        twins = lab.get_info("near_duplicate").get("near_duplicate_sets") if "near_duplicate" in issue_types else None
    columns = set(issues.columns)
    if "label_score" not in columns:
        raise RuntimeError("cleanlab could not rank the labels")
    out = []
    for i, item in enumerate(items):
        row = issues.iloc[i]
        predicted = int(np.argmax(probs[i]))
        duplicate_of = None
        if "is_near_duplicate_issue" in columns and bool(row["is_near_duplicate_issue"]):
            older = [items[int(j)].image_id for j in (twins[i] if twins is not None else ())
                     if items[int(j)].image_id < item.image_id]
            duplicate_of = min(older) if older else None  # the oldest of the set stays; the others are suspects
        out.append(ImageScore(
            image_id=item.image_id, label=item.label, predicted=vocab[predicted],
            probability=float(probs[i, predicted]), label_probability=float(probs[i, labels[i]]),
            label_score=float(row["label_score"]), label_issue=bool(row["is_label_issue"]),
            outlier_score=float(row["outlier_score"]) if "outlier_score" in columns else 1.0,
            outlier=bool(row["is_outlier_issue"]) if "is_outlier_issue" in columns else False,
            duplicate_of=duplicate_of,
            duplicate_score=float(row["near_duplicate_score"]) if "near_duplicate_score" in columns else 1.0,
            valid=bool(item.valid)))
    return tuple(out)


def check_images(spec: TrainSpec, method: str, *, dls, all_dl, device: str, valid_probs, insample_probs,
                 fit_fold: Callable, emit: ProgressFn) -> tuple[tuple[ImageScore, ...], float]:
    """Score every item of the run with `method`; returns (scores, seconds it took). `all_dl` yields every
    item with validation transforms; `insample_probs` is the run's model on them (for "insample")."""
    started = time.monotonic()
    emit(Progress("stage", message="checking every image: embeddings"))
    features = embeddings(pretrained_body(spec.arch), all_dl, device, spec.arch)
    probs = out_of_fold(spec, method, valid_probs=valid_probs, insample_probs=insample_probs, features=features,
                        fit_fold=fit_fold, emit=emit)
    emit(Progress("stage", message="ranking the suspects (cleanlab)"))
    scores = rank(spec, probs, features)
    return scores, time.monotonic() - started


__all__ = ["METHODS", "DEFAULT_METHOD", "check_images", "out_of_fold", "pick_method", "rank", "folds_for",
           "logistic_oof", "embeddings", "pretrained_body"]
