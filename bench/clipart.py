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
