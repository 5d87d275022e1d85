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
