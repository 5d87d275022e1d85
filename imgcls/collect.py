"""Bring images into a workshop: ingest them (in a process pool) and record each outcome.

Used by the CLI's `add-folder`, and by the downloader and the bot for uploads. The
store re-checks duplicates under its write lock, so images ingested in parallel are still
de-duplicated against each other.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import InvalidInput
from .ingest import ingest, mb
from .store import Store, label_key
from .types import ImageMeta, IngestLimits, IngestOutcome

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif"}


@dataclass(frozen=True)
class Added:
    label: str
    name: str  # file name or URL, for reports
    outcome: IngestOutcome


def ingest_file(path: str, images_dir: str, limits: IngestLimits) -> IngestOutcome:
    """Read a file and ingest it; top-level so a process pool can run it."""
    try:
        size = os.path.getsize(path)
        if size > limits.max_bytes:
            return IngestOutcome(ok=False, reason="too_large",
                                 detail=f"the file is {mb(size)}; the limit is {mb(limits.max_bytes)}")
        data = Path(path).read_bytes()
    except OSError as exc:
        return IngestOutcome(ok=False, reason="corrupt", detail=f"the file could not be read: {exc.strerror}")
    return ingest(data, images_dir, limits=limits)


def folder_files(root: str | os.PathLike, labels: list[str]) -> list[tuple[str, Path]]:
    """(label, file) for every file under root/<label>/, matching folder names to labels case-insensitively."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder.")
    by_key = {label_key(label): label for label in labels}
    found, unknown = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = by_key.get(label_key(sub.name))
        if label is None:
            unknown.append(sub.name)
            continue
        found += [(label, f) for f in sorted(sub.rglob("*"))
                  if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES]
    if unknown:
        log.warning("folders that match no label were skipped: %s", ", ".join(unknown))
    if not found:
        raise InvalidInput(f"No images found in {root}: expected one folder per label ({', '.join(labels)}).")
    return found


def add_files(store: Store, workshop_id: int, files: Iterable[tuple[str, Path]], *, meta: ImageMeta = ImageMeta(),
              pool: Optional[Executor] = None,
              progress: Optional[Callable[[int, int, Added], None]] = None) -> list[Added]:
    """Ingest files into the workshop; each gets a stored image or a recorded reject."""
    files = list(files)
    limits = store.ingest_limits(workshop_id)
    images_dir = str(store.images_dir)
    # No known hashes go to ingest: the store re-checks duplicates when it records each image.
    if pool is not None:
        pending = [pool.submit(ingest_file, str(path), images_dir, limits) for _, path in files]
        outcomes = (_result(f) for f in pending)
    else:
        outcomes = (ingest_file(str(path), images_dir, limits) for _, path in files)
    added = []
    for n, ((label, path), outcome) in enumerate(zip(files, outcomes), 1):
        item_meta = ImageMeta(**{**vars(meta), "source_url": meta.source_url or str(path)})
        item = Added(label, path.name, store.add_image(workshop_id, label, outcome, item_meta))
        added.append(item)
        if progress:
            progress(n, len(files), item)
    return added


def _result(future: Future) -> IngestOutcome:
    """A pool job's outcome; a dead worker fails that file, not the whole folder."""
    try:
        return future.result()
    except Exception as exc:  # BrokenProcessPool, a full disk...
        log.exception("ingest failed")
        return IngestOutcome(ok=False, reason="corrupt", detail=f"it could not be processed ({type(exc).__name__})")
