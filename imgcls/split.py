"""A train/validation split that stays put: each image's side is decided once and then never moves.

    sides = SplitBook(store).assign(workshop_id, store.images(workshop_id), seed=42, valid_pct=0.2)
    items = [TrainItem(i, path, label, valid=sides[i]) for ...]     # {image_id: is_valid}

An image's place in the queue for the validation side is a hash of its sha256 and the
workshop's seed. Images get a side the first time a run sees them, lowest hash first, each
going where its label is short, so every label holds its share of validation images to
within one. From then on the side is stored: relabelling, deleting or adding other images
never moves an image, and a relabelled image keeps its side under its new label.

So a side depends on the image and on what the workshop already held when the image
arrived, not on anything that happens later. (A side that depended on the hash alone, such
as "validation when the hash is under 0.2", would leave a third of 5-image labels with no
validation image at all, and training refuses those.) The one exception to "never moves":
a label with images but no validation image left (every one was deleted or relabelled
away) gets its lowest-hash image moved to validation, because training cannot report on a
label it never checks; a before/after leaves such an image out for the old model.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable, Mapping, Sequence

from .store import Store, now

log = logging.getLogger(__name__)


def split_key(seed: int, sha256: str) -> float:
    """Where an image stands in the queue for the validation side: uniform in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def place(new: Sequence[tuple[int, str, float]], existing: Mapping[str, tuple[int, int]],
          valid_pct: float) -> dict[int, bool]:
    """Sides for new images, given (image id, label, key) and {label: (n_valid, n_train)} already placed.

    Lowest key first; an image goes to validation when that brings its label's validation count
    closer to valid_pct of the label's images, so every label stays within one image of its share.
    """
    counts = {label: list(v) for label, v in existing.items()}
    sides: dict[int, bool] = {}
    for image_id, label, _ in sorted(new, key=lambda t: (t[2], t[0])):
        n_valid, n_train = counts.setdefault(label, [0, 0])
        valid = n_valid + 0.5 < (n_valid + n_train + 1) * valid_pct
        counts[label][0 if valid else 1] += 1
        sides[image_id] = valid
    return sides


def split_items(items: Iterable[tuple[int, str, str]], seed: int, valid_pct: float) -> dict[int, bool]:
    """Sides for (image id, label, sha256 or path) with nothing stored: what a fresh workshop would get."""
    return place([(i, label, split_key(seed, key)) for i, label, key in items], {}, valid_pct)


class SplitBook:
    """The stored sides, one set per (seed, validation share), in the workshop database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.transaction():
            store.db["splits"].create(
                {"workshop_id": int, "seed": int, "valid_pct": str, "image_id": int, "valid": int, "at": str},
                pk=("workshop_id", "seed", "valid_pct", "image_id"), if_not_exists=True)

    def assign(self, workshop_id: int, images: Sequence[Mapping], *, seed: int, valid_pct: float) -> dict[int, bool]:
        """{image_id: is_valid} for these image rows (id, label, sha256), placing the ones not seen before."""
        pct = f"{valid_pct:.4f}"
        db = self.store.db
        with self.store.transaction():
            stored = {r["image_id"]: bool(r["valid"]) for r in db.query(
                "SELECT image_id, valid FROM splits WHERE workshop_id = ? AND seed = ? AND valid_pct = ?",
                [workshop_id, seed, pct])}
            counts: dict[str, list[int]] = {}
            for row in images:
                if row["id"] in stored:
                    counts.setdefault(row["label"], [0, 0])[0 if stored[row["id"]] else 1] += 1
            new = [(row["id"], row["label"], split_key(seed, row["sha256"])) for row in images if row["id"] not in stored]
            placed = place(new, {k: (v[0], v[1]) for k, v in counts.items()}, valid_pct)
            moved = self._rescue(images, {**stored, **placed}, seed)
            rows = [{"workshop_id": workshop_id, "seed": seed, "valid_pct": pct, "image_id": i, "valid": int(v),
                     "at": now()} for i, v in {**placed, **moved}.items()]
            if rows:
                db["splits"].upsert_all(rows, pk=("workshop_id", "seed", "valid_pct", "image_id"))
        if moved:
            log.info("workshop %s: moved %s to validation (their labels had none left)", workshop_id, sorted(moved))
        return {row["id"]: {**stored, **placed, **moved}[row["id"]] for row in images}

    @staticmethod
    def _rescue(images: Sequence[Mapping], sides: Mapping[int, bool], seed: int) -> dict[int, bool]:
        """A label with at least two images and none on the validation side gets its lowest-key image moved there."""
        by_label: dict[str, list[Mapping]] = {}
        for row in images:
            by_label.setdefault(row["label"], []).append(row)
        moved = {}
        for rows in by_label.values():
            if len(rows) >= 2 and not any(sides[r["id"]] for r in rows):
                first = min(rows, key=lambda r: (split_key(seed, r["sha256"]), r["id"]))
                moved[first["id"]] = True
        return moved


__all__ = ["SplitBook", "place", "split_items", "split_key"]
