"""A fair before/after: the old model and the new one, scored on the same images with the same labels.

    diff = compare_runs(before_run, after_run)     # run rows from Store.run
    diff.before_right, diff.after_right, diff.n    # "41 of 52" -> "47 of 52"
    diff.fixed, diff.broken                        # image ids: wrong -> right, right -> wrong

The images are the new run's validation images, with the labels they have now (after the
cleaning), less any the old model trained on. The retrain's job scores the old model on them (TrainSpec.compare), so both
accuracies rest on exactly the same images. Pure functions of plain data: no torch here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

log = logging.getLogger(__name__)


def confusion_of(labels: Sequence[str], pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[list[int]]]:
    """(labels, matrix) for (actual, predicted) pairs; rows actual, columns predicted. A prediction outside
    `labels` (a label since removed) gets a row and column of its own at the end."""
    names = list(labels) + sorted({p for _, p in pairs} - set(labels)) + sorted({a for a, _ in pairs} - set(labels))
    names = list(dict.fromkeys(names))
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for actual, predicted in pairs:
        matrix[index[actual]][index[predicted]] += 1
    return names, matrix


@dataclass(frozen=True)
class Comparison:
    before_run: int
    after_run: int
    n: int  # images both models were scored on
    before_right: int
    after_right: int
    labels: tuple[str, ...]
    before_confusion: tuple[tuple[int, ...], ...]
    after_confusion: tuple[tuple[int, ...], ...]
    fixed: tuple[tuple[int, str, str], ...]  # (image_id, label, the old model's wrong answer): wrong -> right
    broken: tuple[tuple[int, str, str], ...]  # (image_id, label, the new model's wrong answer): right -> wrong

    @property
    def before_accuracy(self) -> float:
        return self.before_right / self.n if self.n else 0.0

    @property
    def after_accuracy(self) -> float:
        return self.after_right / self.n if self.n else 0.0


def compare_runs(before: Mapping[str, Any], after: Mapping[str, Any]) -> Optional[Comparison]:
    """Both models on the after run's validation images, or None when the after run did not score the old model."""
    old = {int(i): p for i, p, _ in after.get("parent_predictions") or []}
    new = {int(i): p for i, p, _ in after.get("valid_predictions") or []}
    labels_now = {int(i): label for i, label in (after.get("snapshot") or {}).get("items") or []}
    # never score the old model on an image it trained on (a run from before the split was fixed, or an image
    # moved to validation because its label had none left)
    trained_before = {int(i) for i, valid in (before.get("snapshot") or {}).get("split") or [] if not valid}
    ids = [i for i in new if i in old and i in labels_now and i not in trained_before]
    if not ids:
        return None
    vocab = list(after.get("labels") or sorted(set(labels_now.values())))
    pairs_old = [(labels_now[i], old[i]) for i in ids]
    pairs_new = [(labels_now[i], new[i]) for i in ids]
    names_old, m_old = confusion_of(vocab, pairs_old)
    names_new, m_new = confusion_of(names_old, pairs_new)
    if names_new != names_old:  # the new model's extra names extend the old matrix too
        names_old, m_old = confusion_of(names_new, pairs_old)
    return Comparison(
        before_run=int(before["id"]), after_run=int(after["id"]), n=len(ids),
        before_right=sum(a == p for a, p in pairs_old), after_right=sum(a == p for a, p in pairs_new),
        labels=tuple(names_new), before_confusion=tuple(map(tuple, m_old)), after_confusion=tuple(map(tuple, m_new)),
        fixed=tuple((i, labels_now[i], old[i]) for i in ids if old[i] != labels_now[i] and new[i] == labels_now[i]),
        broken=tuple((i, labels_now[i], new[i]) for i in ids if old[i] == labels_now[i] and new[i] != labels_now[i]),
    )


__all__ = ["Comparison", "compare_runs", "confusion_of"]
