"""The confusion matrix and top-losses pictures."""
from __future__ import annotations

import io

from PIL import Image

from imgcls.interpret import Tile, render_confusion, render_top_losses

from ..conftest import make_image


def _png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return im


def test_confusion_matrix_is_a_png_that_grows_with_the_labels():
    small = _png(render_confusion(["a", "b"], [[3, 1], [0, 4]]))
    labels = [f"label {i}" for i in range(12)]
    big = _png(render_confusion(labels, [[int(i == j) * 5 for j in range(12)] for i in range(12)]))
    assert big.width > small.width and big.height > small.height


def test_emoji_and_non_latin_labels_render_without_errors():
    _png(render_confusion(["🌻", "лаванда", "玫瑰"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]))


def test_top_losses_grid_shows_each_tile_and_survives_a_missing_file(tmp_path):
    path = tmp_path / "x.jpg"
    make_image("circles", 1).save(path)
    tiles = [Tile(str(path), "circles", "squares", 2.5, 0.9, "Photo by A. Person, CC BY 4.0")] * 4
    tiles.append(Tile(str(tmp_path / "gone.jpg"), "a", "b", 1.0, 0.5))
    im = _png(render_top_losses(tiles))
    assert im.width > 600 and im.height > 600  # 3 columns x 2 rows


def test_no_tiles_still_gives_a_picture():
    _png(render_top_losses([]))
