"""ingest: bytes in, a normalised content-addressed JPEG (or a reason) out."""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import multiprocessing
import random
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.ingest import ingest, is_near_duplicate, phash_distance
from imgcls.types import REJECT_REASONS, IngestLimits

# ---------------------------------------------------------------- generated images


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A textured, photo-like RGB image: smooth blobs of colour plus fine noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height RGB pixels, followed by a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def stored(images_dir: Path, outcome) -> Image.Image:
    assert outcome.ok, outcome
    img = Image.open(images_dir / outcome.path)
    img.load()
    return img


def near(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b"", "not_image", "empty"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "not_image", "web page (HTML)"),
        (b"\n  <html lang='en'><head></head></html>", "not_image", "web page (HTML)"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>', "not_image", "SVG"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "not_image", "SVG"),
        (b"cats,dogs\n1,2\n", "not_image", "text"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not_image", "PDF"),
        (bytes(range(256)) * 4, "not_image", "JPEG, PNG"),
    ],
    ids=["empty", "html", "html-indented", "svg", "svg-xml", "text", "pdf", "binary"],
)
def test_files_that_are_not_images_are_refused_with_a_detail(tmp_path, data, reason, detail):
    outcome = ingest(data, tmp_path)
    assert (outcome.ok, outcome.reason) == (False, reason)
    assert detail in outcome.detail
    assert list(tmp_path.iterdir()) == []


def test_html_named_jpg_is_not_an_image(tmp_path):
    page = tmp_path / "cat.jpg"
    page.write_bytes(b"<html><head><title>403 Forbidden</title></head></html>")
    outcome = ingest(page.read_bytes(), tmp_path / "images")
    assert outcome.reason == "not_image"
    assert outcome.detail == "the file is a web page (HTML), not an image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_image_is_corrupt(tmp_path, fmt, keep):
    data = encode(photo(300, 200), fmt)
    outcome = ingest(data[: int(len(data) * keep)], tmp_path)
    assert outcome.reason == "corrupt"
    assert outcome.detail == f"the {fmt} file is truncated or damaged"


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ((1, 1), False),
        ((63, 200), False),
        ((200, 63), False),
        ((64, 64), True),
        ((64, 512), True),
        ((80, 640), True),  # 1:8 keeps 64 pixels across at 512 long
        ((64, 1000), False),  # its stored copy would be 33×512
        ((20000, 64), False),
    ],
)
def test_images_smaller_than_min_side_are_too_small(tmp_path, size, ok):
    outcome = ingest(encode(photo(*size)), tmp_path)
    assert outcome.ok is ok
    if not ok:
        assert outcome.reason == "too_small"
        assert f"{size[0]}×{size[1]}" in outcome.detail and "64" in outcome.detail
    if ok:
        assert min(outcome.width, outcome.height) >= 64  # the stored copy too


def test_body_over_max_bytes_is_too_large(tmp_path):
    data = encode(photo(200, 200))
    outcome = ingest(data, tmp_path, limits=IngestLimits(max_bytes=len(data) - 1))
    assert outcome.reason == "too_large"
    assert ingest(data, tmp_path, limits=IngestLimits(max_bytes=len(data))).ok


@pytest.mark.parametrize(
    "size",
    # past PIL's own error limit; between its warning and its error limits
    [(50_000, 50_000), (10_000, 10_000)],
    ids=["pil-error", "pil-warning"],
)
def test_decompression_bomb_header_is_too_large_without_decoding(tmp_path, size):
    filters = list(warnings.filters)
    started = time.perf_counter()
    outcome = ingest(png_header_only(*size), tmp_path)
    assert outcome.reason == "too_large"
    assert "megapixels; the limit is 40.0 megapixels" in outcome.detail
    assert time.perf_counter() - started < 1.0  # decoding 100+ megapixels would take longer
    assert warnings.filters == filters
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_image_just_over_max_pixels_is_too_large(tmp_path):
    limits = IngestLimits(max_pixels=100 * 100)
    assert ingest(encode(photo(100, 100)), tmp_path, limits=limits).ok
    outcome = ingest(encode(photo(101, 100)), tmp_path, limits=limits)
    assert outcome.reason == "too_large"
    assert "megapixels" in outcome.detail


def test_ingest_never_raises_on_random_or_truncated_bytes(tmp_path):
    rng = random.Random(1234)
    formats = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
    valid = [encode(photo(96, 80, seed=3), fmt) for fmt in formats]
    samples = [rng.randbytes(rng.randint(1, 4000)) for _ in range(300)]
    samples += [v[:16] + rng.randbytes(rng.randint(0, 3000)) for v in valid for _ in range(20)]
    samples += [v[:cut] for v in valid for cut in range(1, len(v), max(1, len(v) // 40))]
    for v in valid:  # bit flips in the middle of valid files
        for _ in range(15):
            damaged = bytearray(v)
            for _ in range(5):
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            samples.append(bytes(damaged))
    for data in samples:
        outcome = ingest(data, tmp_path)
        assert outcome.ok or outcome.reason in REJECT_REASONS


# ---------------------------------------------------------------- colours and orientation


def test_palette_png_transparency_becomes_white(tmp_path):
    img = Image.new("P", (100, 100), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0: red (transparent), 1: blue
    img.paste(1, (50, 0, 100, 100))
    outcome = ingest(encode(img, transparency=0), tmp_path)
    result = stored(tmp_path, outcome)
    assert result.mode == "RGB"
    assert near(result.getpixel((20, 50)), (255, 255, 255))
    assert near(result.getpixel((80, 50)), (0, 0, 255))


def test_rgba_alpha_is_composited_onto_white(tmp_path):
    img = Image.new("RGBA", (120, 100), (0, 255, 0, 0))  # invisible green
    img.paste((255, 0, 0, 255), (40, 0, 80, 100))  # opaque red
    img.paste((0, 0, 0, 128), (80, 0, 120, 100))  # half-transparent black
    result = stored(tmp_path, ingest(encode(img), tmp_path))
    assert near(result.getpixel((15, 50)), (255, 255, 255))
    assert near(result.getpixel((60, 50)), (255, 0, 0))
    assert near(result.getpixel((100, 50)), (127, 127, 127))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (100, 100), (0, 255, 255, 0))  # red in CMYK
    outcome = ingest(encode(img, "JPEG", quality=95), tmp_path)
    result = stored(tmp_path, outcome)
    assert result.mode == "RGB"
    assert near(result.getpixel((50, 50)), (255, 0, 0), tolerance=20)
    assert outcome.original_format == "JPEG"


@pytest.mark.parametrize(
    ("array", "fmt", "expected"),
    [
        (np.full((80, 80), 32768, np.uint16), "PNG", 128),
        (np.full((80, 80), 65535, np.uint16), "PNG", 255),
        (np.full((80, 80), 1000, np.uint16), "PNG", 4),
        (np.full((80, 80), 0.5, np.float32), "TIFF", 128),
        (np.full((80, 80), 32768, np.int32), "TIFF", 128),
    ],
    ids=["16bit-mid", "16bit-white", "16bit-dark", "float", "int32"],
)
def test_deep_greyscale_is_scaled_not_clipped(tmp_path, array, fmt, expected):
    source = Image.fromarray(array)
    assert source.mode in ("I;16", "F", "I")
    result = stored(tmp_path, ingest(encode(source, fmt), tmp_path))
    assert result.mode == "RGB"
    assert near(result.getpixel((40, 40)), (expected,) * 3, tolerance=2)


def test_deep_greyscale_gradient_keeps_its_shades(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (80, 1))
    result = stored(tmp_path, ingest(encode(Image.fromarray(ramp)), tmp_path))
    row = np.asarray(result)[40, :, 0].astype(int)
    assert row[5] < 20 and abs(row[128] - 128) < 10 and row[250] > 235


@pytest.mark.parametrize("mode", ["L", "1", "LA", "P", "RGB"])
def test_other_modes_become_rgb(tmp_path, mode):
    outcome = ingest(encode(photo(90, 70).convert(mode)), tmp_path)
    assert stored(tmp_path, outcome).mode == "RGB"


def test_animated_gif_keeps_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (80, 80), colour) for colour in ("red", "lime", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    outcome = ingest(data, tmp_path)
    assert outcome.original_format == "GIF"
    assert near(stored(tmp_path, outcome).getpixel((40, 40)), (255, 0, 0))


def test_webp_is_accepted(tmp_path):
    outcome = ingest(encode(photo(150, 100), "WEBP", quality=80), tmp_path)
    assert outcome.ok and outcome.original_format == "WEBP"
    assert (outcome.width, outcome.height) == (150, 100)


@pytest.mark.parametrize(
    ("orientation", "marker_at"),
    [(6, (79, 0)), (8, (0, 119))],  # 6: turn clockwise; 8: turn anticlockwise
)
def test_exif_orientation_is_applied(tmp_path, orientation, marker_at):
    img = photo(120, 80, seed=5)
    img.paste((255, 0, 0), (0, 0, 12, 12))  # red marker in the top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes(), comment=b"taken at home")
    outcome = ingest(data, tmp_path)
    result = stored(tmp_path, outcome)
    assert (outcome.original_width, outcome.original_height) == (120, 80)
    assert result.size == (outcome.width, outcome.height) == (80, 120)
    x, y = marker_at
    assert near(result.getpixel((abs(x - 4), abs(y - 4))), (255, 0, 0), tolerance=40)
    assert not result.getexif() and "comment" not in result.info  # no metadata carried over


# ---------------------------------------------------------------- size and storage


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((2000, 1000), (512, 256)),
        ((900, 1800), (256, 512)),
        ((513, 300), (512, 299)),
        ((100, 80), (100, 80)),  # never upscaled
    ],
)
def test_large_images_are_downscaled_to_the_stored_max_side(tmp_path, size, expected):
    outcome = ingest(encode(photo(*size), "JPEG"), tmp_path)
    assert (outcome.width, outcome.height) == expected
    assert stored(tmp_path, outcome).size == expected
    assert (outcome.original_width, outcome.original_height) == size


def test_file_is_written_content_addressed(tmp_path):
    outcome = ingest(encode(photo(300, 200)), tmp_path / "images")
    sha = outcome.sha256
    assert outcome.path == f"{sha[:2]}/{sha}.jpg"
    file = tmp_path / "images" / outcome.path
    content = file.read_bytes()
    assert hashlib.sha256(content).hexdigest() == sha
    assert outcome.nbytes == len(content)
    assert Image.open(file).format == "JPEG"
    assert len(outcome.phash) == 16 and int(outcome.phash, 16) >= 0
    assert [p.name for p in file.parent.iterdir()] == [file.name]  # no temporary files left
    assert file.stat().st_mode & 0o777 == 0o644


def test_ingesting_the_same_bytes_twice_reuses_the_file(tmp_path):
    data = encode(photo(200, 200))
    first = ingest(data, tmp_path)
    before = (tmp_path / first.path).stat()
    second = ingest(data, tmp_path)
    assert second == first
    after = (tmp_path / first.path).stat()
    assert after.st_ino == before.st_ino  # not rewritten...
    assert after.st_mtime_ns >= before.st_mtime_ns  # ...only touched, so an orphan sweep leaves it alone


def test_exact_duplicate_is_refused_and_not_written(tmp_path):
    data = encode(photo(200, 200))
    first = ingest(data, tmp_path / "a")
    again = ingest(data, tmp_path / "b", known_sha256={first.sha256})
    assert (again.ok, again.reason) == (False, "duplicate")
    assert again.sha256 == first.sha256 and again.path is None
    assert not (tmp_path / "b").exists()


def test_near_duplicate_is_refused_but_a_different_image_is_not(tmp_path):
    original = photo(600, 400, seed=7)
    first = ingest(encode(original, "JPEG", quality=95), tmp_path)
    known = {first.phash}

    worse = encode(original, "JPEG", quality=35)
    recompressed = ingest(worse, tmp_path, known_sha256={first.sha256}, known_phashes=known)
    resized = original.resize((570, 380), Image.Resampling.BILINEAR)
    shrunk = ingest(encode(resized, "JPEG", quality=70), tmp_path, known_phashes=known)
    different = ingest(encode(photo(600, 400, seed=8), "JPEG"), tmp_path, known_phashes=known)

    assert (recompressed.reason, shrunk.reason) == ("near_duplicate", "near_duplicate")
    assert recompressed.path is None and recompressed.phash is not None
    assert different.ok
    assert phash_distance(first.phash, different.phash) > IngestLimits().near_duplicate_distance


def test_phash_helpers():
    assert phash_distance("0000000000000000", "000000000000000f") == 4
    assert phash_distance("ffffffffffffffff", "0000000000000000") == 64
    assert is_near_duplicate("00000000000000ff", ["ffff000000000000", "000000000000000f"], 4)
    assert not is_near_duplicate("00000000000000ff", ["000000000000000f"], 3)
    assert not is_near_duplicate("00000000000000ff", [], 64)


# ---------------------------------------------------------------- processes


def test_ingest_runs_in_a_spawned_process_pool(tmp_path):
    images = [encode(photo(200, 150, seed=s), "JPEG") for s in range(4)] + [b"<html></html>"]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        outcomes = list(pool.map(ingest, images, [str(tmp_path)] * len(images)))
    assert [o.ok for o in outcomes] == [True, True, True, True, False]
    assert all((tmp_path / o.path).is_file() for o in outcomes[:4])
    assert outcomes[4].reason == "not_image"


def test_importing_ingest_stays_light():
    heavy = "{'torch', 'fastai', 'discord'}"
    code = f"import sys, imgcls.ingest; print(sorted({heavy} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("damage", ["cut 50%", "cut 95%", "cut 99.5%", "garbage in the middle"])
def test_a_large_jpeg_decoded_at_a_dct_scale_is_still_refused_when_damaged(tmp_path, progressive, damage):
    """Big JPEGs decode at 1/2, 1/4 or 1/8 scale (Image.draft), which still reads the whole entropy-coded stream:
    damage anywhere is found, as with a full decode."""
    img = photo(2400, 1600)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90, progressive=progressive)
    data = buffer.getvalue()
    assert ingest(data, tmp_path / "whole").ok  # the undamaged file is fine, stored at 512 px from a 1/4 decode
    if damage.startswith("cut"):
        bad = data[: int(len(data) * float(damage.split()[1].rstrip("%")) / 100)]
    else:
        middle = len(data) // 2
        bad = data[:middle] + bytes(range(256)) * 8 + data[middle + 2048:]
    outcome = ingest(bad, tmp_path / "bad")
    assert outcome.reason == "corrupt", outcome
    assert outcome.detail == "the JPEG file is truncated or damaged"


@pytest.mark.parametrize("size", [(2400, 1600), (2401, 1601), (4300, 3225)])  # the last two: padded DCT blocks
def test_a_jpeg_decoded_at_a_dct_scale_is_stored_as_a_full_decode_would_be(tmp_path, size):
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (size[1] // 64, size[0] // 64, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC)  # smooth: a misplaced pixel shows
    data = encode(img, "JPEG", quality=90)
    outcome = ingest(data, tmp_path)
    target = (512, round(size[1] * 512 / size[0]))
    assert (outcome.width, outcome.height) == target
    assert (outcome.original_width, outcome.original_height) == size
    full = Image.open(io.BytesIO(data))
    full.load()
    reference = full.resize(target, Image.Resampling.LANCZOS)  # a full decode, then a plain Lanczos

    def psnr(a: Image.Image) -> float:
        x, y = np.asarray(a.convert("RGB"), dtype=np.float64), np.asarray(reference, dtype=np.float64)
        return 10 * np.log10(255 ** 2 / np.mean((x - y) ** 2))
    before = Image.open(io.BytesIO(encode(full.resize(target, Image.Resampling.LANCZOS, reducing_gap=1.0),
                                          "JPEG", quality=90)))  # how ingest stored it before DCT scaling
    ours = Image.open(tmp_path / outcome.path)
    assert psnr(ours) > psnr(before) - 1.0, (psnr(ours), psnr(before))
