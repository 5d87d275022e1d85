"""Real images for benchmarks: Debian's openclipart-png, fetched at bench time only (never in tests).

    root = clipart_root(cache)                       # apt-get download + dpkg -x, once
    files = category_files(root, ["food/desserts", "tools"], min_side=64)

The package is clip art (PNG, mostly with transparency) sorted into category folders:
real drawings by many people, far less regular than generated shapes.
"""
from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path
from typing import Sequence

from PIL import Image

PACKAGE = "openclipart-png"
DEFAULT_CATEGORIES = ("food/desserts", "recreation/music", "recreation/sports", "tools")


def clipart_root(cache: Path) -> Path:
    """The package's png folder under `cache`, downloading and unpacking it the first time."""
    root = cache / "x" / "usr" / "share" / "openclipart" / "png"
    if root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        print(f"fetching {PACKAGE} with apt-get download into {cache} (about 130 MB)...", flush=True)
        subprocess.run(["apt-get", "download", PACKAGE], cwd=cache, check=True)
        debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(cache / "x")], check=True)
    return root


def category_files(root: Path, categories: Sequence[str], min_side: int = 64,
                   max_pixels: int = 40_000_000) -> dict[str, list[Path]]:
    """{category: sorted PNG paths} keeping images of at least `min_side` px that ingest would accept."""
    out = {}
    for cat in categories:
        kept = []
        for f in sorted(glob.glob(os.path.join(root, cat, "**", "*.png"), recursive=True)):
            try:
                with Image.open(f) as im:
                    w, h = im.size
            except OSError:
                continue
            if min(w, h) >= min_side and w * h <= max_pixels:
                kept.append(Path(f))
        out[cat] = kept
    return out


def short_name(category: str) -> str:
    return category.rstrip("/").split("/")[-1]


def ingest_categories(store, categories: Sequence[str], cache: Path, pool=None) -> dict[str, list[Path]]:
    """Every usable image of the categories ingested once into `store` (near-duplicates dropped, normalised
    512 px copies), as {short label: sorted stored files}."""
    from imgcls.collect import add_files
    from imgcls.types import ImageMeta

    found = category_files(clipart_root(cache), categories)
    labels = [short_name(c) for c in categories]
    ws = store.create_workshop("all images: " + ", ".join(categories), labels)
    files = [(short_name(c), f) for c in categories for f in found[c]]
    added = add_files(store, ws["id"], files, meta=ImageMeta(source="folder", added_by="bench"), pool=pool)
    by_label: dict[str, list[Path]] = {label: [] for label in labels}
    for outcome in added:
        if outcome.outcome.ok:
            row = store.image(outcome.outcome.image_id)
            by_label[row["label"]].append(store.image_path(row))
    return {label: sorted(files) for label, files in by_label.items()}


def hold_out(by_label: dict[str, list[Path]], rng, share: float) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(test, rest) as (label, file) pairs: `share` of each label, drawn with `rng`, is the held-out test set."""
    test, rest = [], []
    for label, files in by_label.items():
        files = sorted(files)
        rng.shuffle(files)
        n_test = round(len(files) * share)
        test += [(label, f) for f in files[:n_test]]
        rest += [(label, f) for f in files[n_test:]]
    return test, rest
