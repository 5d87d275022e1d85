"""Suspect images: what a run's check found, stored with the run, and the ones to put up for a vote.

    book = SuspectBook(store)
    book.record(run_id, result.scores)              # with the run (runs.record_outcome does this)
    picked = book.pick(workshop_id, count=10)       # best first, across the whole dataset
    for s in picked.suspects:
        print(s.image_id, s.kind, s.reason)         # "labelled *bird*; the model is 91% sure it is *fruit*"

A suspect is an image whose label cleanlab doubts, or whose out-of-fold prediction is
another label, or that cleanlab finds unlike every other image (an outlier), or almost the
same as an older image (a near-duplicate). What cleanlab flags comes first, then the other
disagreements; within each, the lowest cleanlab score (the surest problem) first. For labels
the score is the out-of-fold probability of the image's own label (cleanlab's
self-confidence), which ranked flipped labels as well as the other scores in
bench/cleaning.py's data.

`pick` leaves out images that are deleted, relabelled since the run, or already up for a
vote, and images the group voted to keep, unless a later run scores them much worse.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .cleaning import CleaningBoard
from .errors import InvalidInput, NotFound
from .store import Store
from .types import ImageScore, to_plain

log = logging.getLogger(__name__)

#: A kept image goes up again only when a later run finds a new reason, or scores it at most this share of
#: its score when the group kept it (scores are cleanlab's, 0-1, lower is worse: 0.08 kept, 0.04 back).
MUCH_WORSE = 0.5
KINDS = ("label", "outlier", "duplicate")


@dataclass(frozen=True)
class Suspect:
    image_id: int
    kind: str  # "label", "outlier" or "duplicate": the main reason, which decides its score
    reason: str  # for a beginner, e.g. "labelled *bird*; the model is 91% sure it is *fruit*"
    label: str  # the label it had in the run
    predicted: str
    probability: float  # the checking model's, for `predicted`
    label_probability: float  # ... and for the image's own label
    score: float  # cleanlab's score for `kind`: near 0 is a surer problem
    flagged: bool  # cleanlab flags it (rather than a plain disagreement)
    duplicate_of: Optional[int] = None
    valid: bool = False
    kinds: tuple[str, ...] = ()  # every reason that applies, main one first


@dataclass(frozen=True)
class Selection:
    run_id: int
    suspects: tuple[Suspect, ...]  # the ones to post, best first
    asked: int
    available: int  # how many suspects could be posted at all

    @property
    def short(self) -> bool:
        return len(self.suspects) < self.asked


def _stars(label: str) -> str:
    return f"*{label}*"


def explain(score: ImageScore | Suspect, kinds: Iterable[str], quote: Callable[[str], str] = _stars) -> str:
    """The vote message's reason, in words a beginner understands. `quote` sets a label off from the words
    around it (the bot's also escapes what a label could do in a message)."""
    parts = []
    for kind in kinds:
        if kind == "label":
            if score.predicted != score.label:
                parts.append(f"labelled {quote(score.label)}; the model is {score.probability:.0%} sure it is "
                             f"{quote(score.predicted)}")
            else:
                parts.append(f"labelled {quote(score.label)}, but the model is only {score.label_probability:.0%} "
                             "sure of that")
        elif kind == "outlier":
            parts.append("unlike the other images (is it off-topic?)")
        elif kind == "duplicate":
            parts.append(f"almost the same as image {score.duplicate_of}")
    return "; ".join(parts)


def suspect_of(score: ImageScore) -> Optional[Suspect]:
    """The suspect this score makes, or None for an image that looks fine."""
    found = []  # (flagged, score, kind)
    if score.label_issue or score.predicted != score.label:
        found.append((score.label_issue, score.label_score, "label"))
    if score.outlier:
        found.append((True, score.outlier_score, "outlier"))
    if score.duplicate_of is not None:
        found.append((True, score.duplicate_score, "duplicate"))
    if not found:
        return None
    found.sort(key=lambda t: (not t[0], t[1]))
    flagged, value, kind = found[0]
    kinds = tuple(k for _, _, k in found)
    return Suspect(image_id=score.image_id, kind=kind, reason=explain(score, kinds), label=score.label,
                   predicted=score.predicted, probability=score.probability,
                   label_probability=score.label_probability, score=value, flagged=flagged,
                   duplicate_of=score.duplicate_of, valid=score.valid, kinds=kinds)


def ranked(scores: Iterable[ImageScore]) -> list[Suspect]:
    """Every suspect among the scores, best first: cleanlab's flags, then plain disagreements; lowest score first."""
    out = [s for s in (suspect_of(x) for x in scores) if s is not None]
    return sorted(out, key=lambda s: (not s.flagged, s.score, s.image_id))


class SuspectBook:
    """Each run's image scores, in the workshop database, and the selection for a vote."""

    def __init__(self, store: Store, board: Optional[CleaningBoard] = None) -> None:
        self.store = store
        self.board = board or CleaningBoard(store)
        with store.transaction():
            store.db["image_scores"].create(
                {"run_id": int, "image_id": int, "label": str, "predicted": str, "probability": float,
                 "label_probability": float, "label_score": float, "label_issue": int, "outlier_score": float,
                 "outlier": int, "duplicate_of": int, "duplicate_score": float, "valid": int},
                pk=("run_id", "image_id"), foreign_keys=[("run_id", "runs", "id")], if_not_exists=True)

    def record(self, run_id: int, scores: Iterable[ImageScore]) -> int:
        rows = [{"run_id": run_id, **to_plain(s)} for s in scores]
        with self.store.transaction():
            self.store.db.execute("DELETE FROM image_scores WHERE run_id = ?", [run_id])
            if rows:
                self.store.db["image_scores"].insert_all(rows)
        return len(rows)

    def scores(self, run_id: int) -> list[ImageScore]:
        rows = self.store.db.query("SELECT * FROM image_scores WHERE run_id = ? ORDER BY image_id", [run_id])
        out = []
        for r in rows:
            r.pop("run_id")
            for key in ("label_issue", "outlier", "valid"):
                r[key] = bool(r[key])
            out.append(ImageScore(**r))
        return out

    def ranking(self, run_id: int) -> list[Suspect]:
        return ranked(self.scores(run_id))

    def latest_scored_run(self, workshop_id: int) -> dict[str, Any]:
        """The newest finished run; NotFound if there is none or it checked no image."""
        run = self.store.latest_run(workshop_id)
        self._require_scores(run)
        return run

    def _require_scores(self, run: dict[str, Any]) -> None:
        if self.store.db.execute("SELECT 1 FROM image_scores WHERE run_id = ? LIMIT 1", [run["id"]]).fetchone():
            return
        error = (run.get("scoring") or {}).get("error")
        why = f" ({error})" if error else ""
        raise NotFound(f"Run {run['id']} did not check its images for suspects{why}; train again (`/train`) and "
                       "every image will be checked.")

    def pick(self, workshop_id: int, count: int, *, run_id: Optional[int] = None) -> Selection:
        """Up to `count` suspects of the latest (or the given) run that can go up for a vote now, best first."""
        if count < 1:
            raise InvalidInput("Ask for at least one image.")
        run = self.store.run(run_id) if run_id is not None else self.latest_scored_run(workshop_id)
        if run["workshop_id"] != workshop_id:
            raise NotFound(f"This workshop has no run {run_id}.")
        self._require_scores(run)
        busy = self.board.open_image_ids(workshop_id)
        kept = self.board.kept_scores(workshop_id)
        images = {r["id"]: r for r in self.store.images(workshop_id)}  # active ones
        eligible = []
        for s in self.ranking(run["id"]):
            image = images.get(s.image_id)
            if image is None or image["label"] != s.label or s.image_id in busy:
                continue  # deleted, relabelled since the run, or already up for a vote
            if s.kind == "duplicate" and s.duplicate_of not in images:
                continue  # its twin is gone: nothing to compare with
            if s.image_id in kept:
                kind, score = kept[s.image_id]
                if kind == s.kind and s.score > score * MUCH_WORSE:
                    continue  # the group kept it, and this run has no new reason and no much worse score
            eligible.append(s)
        return Selection(run_id=run["id"], suspects=tuple(eligible[:max(0, count)]), asked=count,
                         available=len(eligible))


__all__ = ["KINDS", "MUCH_WORSE", "Selection", "Suspect", "SuspectBook", "explain", "ranked", "suspect_of"]
