"""Pictures of a training run: the confusion matrix and the top-losses grid, as PNG bytes.

The numbers come from fastai's ClassificationInterpretation (in the training job); these
functions draw them from plain data, so results can be re-rendered later without torch.
Explicit matplotlib Figures on the Agg backend; nothing global is touched.
"""
from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .types import TopLoss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    path: str
    actual: str
    predicted: str
    loss: float
    probability: float
    credit: Optional[str] = None

    @classmethod
    def from_top_loss(cls, top: TopLoss, credit: Optional[str] = None) -> "Tile":
        return cls(top.path, top.actual, top.predicted, top.loss, top.probability, credit)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs (emoji labels) are drawn as boxes, not errors
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clf()
    return buf.getvalue()


def render_confusion(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str = "Confusion matrix") -> bytes:
    """Rows are the actual labels, columns the predictions; the diagonal is what the model got right."""
    n = len(labels)
    side = max(4.0, 1.0 + 0.7 * n)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    peak = max((max(row) for row in matrix), default=0) or 1
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    total, right = sum(map(sum, matrix)), sum(matrix[i][i] for i in range(n))
    ax.set_title(f"{title}\n{right}/{total} right" if total else title)
    return _png(fig)


def render_top_losses(tiles: Sequence[Tile], columns: int = 3) -> bytes:
    """A grid of the images the model got most wrong: prediction/actual, loss, probability, credit."""
    return render_grid([(t.path, f"{t.predicted} / {t.actual}\n{t.loss:.2f} / {t.probability:.2f}", t.credit)
                        for t in tiles], columns, title="Prediction / Actual / Loss / Probability",
                       empty="No validation images to show")


def render_grid(tiles: Sequence[tuple[str, str, Optional[str]]], columns: int = 3, *, title: str = "",
                empty: str = "No images to show") -> bytes:
    """A grid of (image path, caption, credit) tiles as PNG bytes; a missing file shows as a note."""
    if not tiles:
        fig = Figure(figsize=(4, 1.5))
        fig.text(0.5, 0.5, empty, ha="center", va="center")
        return _png(fig)
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows))
    if title:
        fig.suptitle(title)
    for k, (path, caption, credit) in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, k + 1)
        try:
            with Image.open(path) as im:
                im.thumbnail((256, 256))
                ax.imshow(im.convert("RGB"))
        except OSError as exc:
            log.warning("grid tile %s could not be read: %s", path, exc)
            ax.text(0.5, 0.5, "image missing", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(caption, fontsize=10)
        if credit:
            credit = credit if len(credit) <= 48 else credit[:47] + "…"
            ax.text(0.5, -0.04, credit, transform=ax.transAxes, ha="center", va="top", fontsize=7, color="#555555")
    return _png(fig)


def render_learning_curve(epochs: Sequence[dict], title: str = "Learning curve") -> bytes:
    """Train and valid loss per epoch (dicts with epoch, phase, train_loss, valid_loss); the frozen epochs, where
    only the new head learns, are shaded."""
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    if not epochs:
        ax.text(0.5, 0.5, "No epochs recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    x = list(range(1, len(epochs) + 1))
    ax.plot(x, [e["train_loss"] for e in epochs], "o-", label="train loss", color="#1f77b4")
    ax.plot(x, [e["valid_loss"] for e in epochs], "s-", label="valid loss", color="#ff7f0e")
    frozen = [n for n, e in zip(x, epochs) if e.get("phase") == "frozen"]
    if frozen:
        ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="#dddddd", alpha=0.6, lw=0, label="frozen (head only)")
    ax.set_xticks(x)
    ax.set_xlim(0.5, len(x) + 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Loss")
    last = epochs[-1]
    ax.set_title(f"{title}\nfinal valid loss {last['valid_loss']:.3f}, accuracy {last.get('accuracy', 0):.1%}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def side_by_side(left_png: bytes, right_png: bytes, captions: Sequence[str] = ("Before", "After"),
                 gap: int = 24) -> bytes:
    """Two PNGs in one image, left and right, top-aligned on white under a caption each (before and after
    confusion matrices)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=22)
    band = 40
    with Image.open(io.BytesIO(left_png)) as a, Image.open(io.BytesIO(right_png)) as b:
        a, b = a.convert("RGB"), b.convert("RGB")
        out = Image.new("RGB", (a.width + gap + b.width, band + max(a.height, b.height)), "white")
        out.paste(a, (0, band))
        out.paste(b, (a.width + gap, band))
    draw = ImageDraw.Draw(out)
    for x, width, caption in ((0, a.width, captions[0]), (a.width + gap, b.width, captions[1])):
        draw.text((x + width / 2, band / 2), caption, fill="#111111", font=font, anchor="mm")
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
