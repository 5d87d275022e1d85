"""Fixtures shared by the whole suite: a fresh store and generated, separable image sets."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgcls.store import Store

# Each class: a background colour range and a shape. Distinct enough to learn in an epoch or two,
# varied enough (position, size, noise) that no two images are near-duplicates.
CLASSES = {
    "circles": ((200, 60, 60), "ellipse"),
    "squares": ((60, 170, 60), "rectangle"),
    "triangles": ((60, 80, 200), "polygon"),
}


def make_image(kind: str, seed: int, size: int = 96) -> Image.Image:
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    base, shape = CLASSES[kind]
    bg = tuple(int(np.clip(c + rng.randint(-40, 40), 0, 255)) for c in base)
    arr = np.clip(nprng.normal(0, 28, (size, size, 3)) + np.array(bg), 0, 255).astype("uint8")
    im = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(size // 8, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        fill = tuple(rng.randint(180, 255) for _ in range(3))
        if shape == "ellipse":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "rectangle":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_image_folders(root: Path, per_label: int, size: int = 96, labels=tuple(CLASSES), seed: int = 0) -> Path:
    """root/<label>/<n>.jpg for each label: the layout `imgcls add-folder` reads."""
    for k, label in enumerate(labels):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            (folder / f"{i:03d}.jpg").write_bytes(jpeg_bytes(make_image(label, seed * 100_000 + k * 1000 + i, size)))
    return root


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def image_folders(tmp_path) -> Path:
    """Three separable labels, 12 images each, 96 px."""
    return write_image_folders(tmp_path / "photos", per_label=12)


def embed_dicts(message) -> list[dict]:
    """A message's embeds as Discord's dicts, from discord.py (SimCord) or the wire (FakeDiscord)."""
    return [e if isinstance(e, dict) else e.to_dict() for e in message.embeds]


def shown(message) -> str:
    """Everything a person reads in a message: its text and its embeds' author, title, description, fields, footer."""
    parts = [message.content or ""]
    for e in embed_dicts(message):
        parts += [(e.get("author") or {}).get("name", ""), e.get("title", ""), e.get("description", "")]
        for f in e.get("fields") or []:
            parts += [f["name"], f["value"]]
        parts.append((e.get("footer") or {}).get("text", ""))
    return "\n".join(p for p in parts if p)


def inline_images(message) -> list[str]:
    """The file names of a message's attachments its embeds show, in embed order (image, then thumbnail). An
    embed may name its file as `attachment://name` (as sent; SimCord keeps it) or by the attachment's URL (as
    Discord rewrites it); a reference to a file the message lacks fails."""
    by_url = {a.url: a.filename for a in message.attachments}
    names = {a.filename for a in message.attachments}
    out = []
    for e in embed_dicts(message):
        for key in ("image", "thumbnail"):
            url = (e.get(key) or {}).get("url")
            if not url:
                continue
            name = url.removeprefix("attachment://") if url.startswith("attachment://") else by_url.get(url)
            assert name in names, f"embed {key} {url!r} is not one of the message's files {sorted(names)}"
            out.append(name)
    return out
