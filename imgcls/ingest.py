"""Bytes -> a verified, normalised, de-duplicated image file (or the reason it was refused).

`ingest` is plain, synchronous and top-level so that it can run in a process pool. It
never raises for bad input: every refusal is an `IngestOutcome(ok=False, reason=...)`
whose `reason` is a key of `imgcls.types.REJECT_REASONS`. It uses `warnings.catch_warnings`,
which is not thread-safe: prefer a process pool to a thread pool.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Optional

import imagehash
import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from imgcls.errors import InvalidInput
from imgcls.types import IngestLimits, IngestOutcome

log = logging.getLogger(__name__)

#: Formats we are willing to decode; the others (EPS, PSD, FITS, ...) are refused unread.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF")
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255, 255)
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
#: EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose does)
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def phash_distance(a: str, b: str) -> int:
    """How many of the 64 bits differ between two perceptual hashes (16 hex digits each)."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def perceptual_hash(img: Image.Image) -> str:
    """imagehash's pHash (16 hex digits) of the stored copy, box-reduced first (it only looks at 32×32): the same
    bits as `imagehash.phash`, with its two DCTs done as one small matrix product (the 8 low frequencies only)."""
    factor = max(1, min(img.size) // 128)
    grey = (img.reduce(factor) if factor > 1 else img).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    low = _DCT8 @ np.asarray(grey, dtype=np.float64) @ _DCT8.T
    return str(imagehash.ImageHash(low > np.median(low)))


#: scipy.fftpack.dct's type-II matrix (unnormalised) for 32 points, its first 8 rows
_DCT8 = 2 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(32)[None, :] + 1) / 64)


def is_near_duplicate(phash: str, known: Iterable[str], distance: int) -> bool:
    """Whether any hash in `known` is within `distance` bits of `phash`."""
    target = int(phash, 16)
    return any((target ^ int(k, 16)).bit_count() <= distance for k in known)


def ingest(
    data: bytes,
    images_dir: str | Path,
    *,
    limits: IngestLimits = IngestLimits(),
    known_sha256: Collection[str] = (),
    known_phashes: Collection[str] = (),
) -> IngestOutcome:
    """Check, normalise and store one image as `images_dir/<sha[:2]>/<sha>.jpg`.

    The stored copy is RGB, upright, at most `limits.stored_max_side` on its longest side
    and JPEG-encoded without metadata. Duplicates (by sha256 of the stored bytes, or by
    perceptual hash) are reported with their hashes filled in but are not written.
    """
    try:
        return _ingest(data, Path(images_dir), limits, known_sha256, known_phashes)
    except _Refused as refusal:
        return IngestOutcome(ok=False, reason=refusal.reason, detail=refusal.detail)


def _ingest(
    data: bytes,
    images_dir: Path,
    limits: IngestLimits,
    known_sha256: Collection[str],
    known_phashes: Collection[str],
) -> IngestOutcome:
    if not data:
        raise _Refused("not_image", "the file is empty")
    if len(data) > limits.max_bytes:
        size, limit = mb(len(data)), mb(limits.max_bytes)
        raise _Refused("too_large", f"the file is {size}; the limit is {limit}")
    img, (width, height), original_size, original_format = _decode(data, limits)
    if min(width, height) < limits.min_side:
        raise _Refused(
            "too_small",
            f"the image is {width}×{height} pixels; both sides must be at least "
            f"{limits.min_side} pixels",
        )
    img = _downscale(img, limits.stored_max_side, (width, height))
    _check_stored_shape(width, height, img.size, limits)

    img.info = {}  # no comment, EXIF, XMP or ICC profile is carried over
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=limits.jpeg_quality, optimize=False, exif=b"")
    stored = buffer.getvalue()
    sha = hashlib.sha256(stored).hexdigest()
    phash = perceptual_hash(img)
    outcome = IngestOutcome(
        ok=True,
        sha256=sha,
        phash=phash,
        width=img.width,
        height=img.height,
        nbytes=len(stored),
        original_width=original_size[0],
        original_height=original_size[1],
        original_format=original_format,
    )
    if sha in known_sha256:
        detail = "the same image is already in the workshop"
        return dataclasses.replace(outcome, ok=False, reason="duplicate", detail=detail)
    if is_near_duplicate(phash, known_phashes, limits.near_duplicate_distance):
        detail = "a nearly identical image is already in the workshop"
        return dataclasses.replace(outcome, ok=False, reason="near_duplicate", detail=detail)
    relative = f"{sha[:2]}/{sha}.jpg"
    _write_atomically(images_dir / relative, stored)
    return dataclasses.replace(outcome, path=relative)


def decode_rgb(data: bytes, limits: IngestLimits = IngestLimits()) -> Image.Image:
    """Decode image bytes exactly as ingest prepares images for training (first frame, upright,
    RGB on white, downscaled), for classifying a pasted image. Raises InvalidInput with the reason."""
    if not data:
        raise InvalidInput("The image is empty.")
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"The image is {mb(len(data))}; the limit is {mb(limits.max_bytes)}.")
    try:
        img, upright, _, _ = _decode(data, limits)
    except _Refused as refusal:
        raise InvalidInput(f"That image can't be used: {refusal.detail}.") from None
    return _downscale(img, limits.stored_max_side, upright)


def _check_stored_shape(width: int, height: int, kept: tuple[int, int], limits: IngestLimits) -> None:
    """Refuse an image so long and thin that its stored copy (at most stored_max_side long) is narrower than
    min_side: a 64×20000 strip would be kept as 2×512 pixels."""
    if min(kept) < limits.min_side:
        widest = limits.stored_max_side / limits.min_side
        raise _Refused("too_small", f"the image is {width}×{height} pixels, so long and thin that its stored "
                                    f"copy would be only {min(kept)} pixels across; crop it to at most 1:{widest:g}")


def _downscale(img: Image.Image, max_side: int, original: Optional[tuple[int, int]] = None) -> Image.Image:
    """At most max_side on the longest side. The size is worked out from the `original` (upright) size, so a JPEG
    decoded at a DCT scale is stored at exactly the size a full decode would give."""
    new_size = _stored_size(original or img.size, max_side)
    if new_size == img.size:
        return img
    # A box reduction to no less than twice the size, then a short (bilinear, antialiased) filter: less than half
    # the time of Lanczos, and the same picture at 512 px (bench/ingest.py prints the PSNR against a full-size
    # Lanczos). A JPEG decoded at a DCT scale is already within 2x, so only the filter runs.
    return img.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _decode(data: bytes, limits: IngestLimits) -> tuple[Image.Image, tuple[int, int], tuple[int, int], str]:
    """The first frame, fully decoded, upright and RGB, with its upright size, the original size and format.

    Modes other than RGB are converted a strip at a time and box-reduced on the way (to no less than twice
    the stored size, so the final Lanczos step has pixels to work with): a 40-megapixel 16-bit or float
    greyscale, or a transparent PNG, never exists as full-size float or RGBA copies at once."""
    with warnings.catch_warnings():  # restores the filters afterwards
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im, original_size, box = _open(data, limits)
        except _BOMBS:
            detail = _too_many_pixels("over", Image.MAX_IMAGE_PIXELS, limits)
            raise _Refused("too_large", detail) from None
        original_format = im.format or "unknown"
        try:
            orientation = int(im.getexif().get(0x0112) or 1)
        except Exception:  # broken EXIF: keep the pixels as they are
            log.debug("ignoring unreadable EXIF orientation", exc_info=True)
            orientation = 1
        method = _ORIENTATIONS.get(orientation)
        upright = original_size[::-1] if orientation in (5, 6, 7, 8) else original_size
        factor = max(1, max(im.size) // (2 * limits.stored_max_side))  # im: as decoded (a JPEG maybe drafted)
        try:
            img = _to_rgb(im, factor)
            if box is not None:  # drafted: the part of the decoded pixels that is the picture, resized to the copy
                img = img.resize(_stored_size(original_size, limits.stored_max_side), Image.Resampling.BILINEAR,
                                 box=tuple(v / factor for v in box))
            # turned upright after the strips have shrunk it: no full-size copy of a deep or float image
            return (img.transpose(method) if method is not None else img), upright, original_size, original_format
        except Exception as e:
            log.debug("cannot convert a %s image in mode %s: %r", original_format, im.mode, e)
            detail = f"the image's colours cannot be read (mode {im.mode})"
            raise _Refused("corrupt", detail) from None


def _draft(im: Image.Image, max_side: int) -> Optional[tuple[float, float, float, float]]:
    """Have a JPEG decode at the smallest DCT scale (1/2, 1/4 or 1/8) whose longest side still covers `max_side`:
    a 12 MP photo is decoded at 1/4 or 1/8 instead of in full. The whole entropy-coded stream is still read, so
    a truncated or damaged file is refused as before. Returns the box of the decoded pixels that holds the
    picture (a side that is not a multiple of the scale ends in a padded pixel), or None when not drafted."""
    width, height = im.size
    if max(width, height) <= 2 * max_side:
        return None
    scale = max_side / max(width, height)  # draft keeps every side at least the size asked for
    _, box = im.draft(im.mode, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
    return tuple(box) if box is not None and im.size != (width, height) else None


def _stored_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The stored copy's size for an image of `size`: at most max_side on its longest side."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open(data: bytes, limits: IngestLimits) -> tuple[Image.Image, tuple[int, int], Optional[tuple]]:
    """Identify, check the pixel count before decoding, then decode the first frame (a JPEG at the DCT scale
    the stored copy needs); with the size the file says it is, and the draft's box (see _draft)."""
    try:
        im = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except _BOMBS:
        raise
    except Exception as e:  # not an image at all, or a plugin choking on a broken header
        log.debug("cannot open image: %r", e)
        kind = _signature(data)
        if isinstance(e, UnidentifiedImageError) and not kind:
            raise _Refused("not_image", _sniff(data)) from None
        raise _Refused("corrupt", f"the {kind or 'image'} file is truncated or damaged") from None
    width, height = im.size
    if width * height > limits.max_pixels:
        detail = _too_many_pixels(f"{width}×{height},", width * height, limits)
        raise _Refused("too_large", detail)
    deep_limit = limits.max_pixels * 3 // 4  # 4 bytes a pixel: no more memory than an RGB image at the limit
    if im.mode in ("F", "I") and width * height > deep_limit:
        raise _Refused("too_large", f"the image is {width}×{height}, {width * height / 1e6:.1f} megapixels of "
                                    f"32-bit greyscale; the limit for those is {deep_limit / 1e6:.1f} megapixels: "
                                    "save it as an 8- or 16-bit image")
    box = _draft(im, limits.stored_max_side) if isinstance(im, JpegImagePlugin.JpegImageFile) else None  # MPO too
    try:
        im.seek(0)
        im.load()
    except _BOMBS:
        raise
    except Exception as e:
        log.debug("cannot decode a %s image: %r", im.format, e)
        raise _Refused("corrupt", f"the {im.format} file is truncated or damaged") from None
    return im, (width, height), box


#: Rows converted at a time: a strip of a 10,000-pixel-wide float image is about 20 MB as float64.
_STRIP_PIXELS = 2_500_000


def _to_rgb(im: Image.Image, factor: int = 1) -> Image.Image:
    """RGB: alpha composited onto white, CMYK converted, 16-bit and float grey scaled to 8 bits; box-reduced
    by `factor`. Other modes than RGB go a strip at a time, so memory stays near the decoded image's own."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode == "F" or im.mode.startswith("I"):
        scale = _grey_scale(im)
        convert = lambda strip: Image.fromarray(scale(np.asarray(strip)), "L").convert("RGB")  # noqa: E731
    elif im.mode in _ALPHA_MODES or "transparency" in im.info:
        def convert(strip: Image.Image) -> Image.Image:
            rgba = strip.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            background.alpha_composite(rgba)
            return background.convert("RGB")
    else:
        convert = lambda strip: strip.convert("RGB")  # noqa: E731
    return _by_strips(im, convert, factor)


def _by_strips(im: Image.Image, convert, factor: int) -> Image.Image:
    """convert() applied to horizontal strips of `im` (a multiple of `factor` rows each), each box-reduced by
    `factor` and pasted into one RGB image."""
    width, height = im.size
    rows = max(factor, (_STRIP_PIXELS // max(1, width)) // factor * factor)
    out = Image.new("RGB", (max(1, -(-width // factor)), max(1, -(-height // factor))))
    for top in range(0, height, rows):
        strip = convert(im.crop((0, top, width, min(height, top + rows))))
        if factor > 1:
            strip = strip.reduce(factor)
        out.paste(strip, (0, top // factor))
    return out


def _grey_scale(im: Image.Image):
    """A function mapping strips of this 16-bit, 32-bit or float greyscale image into 0..255 (scaled, not
    clipped), from the range of the whole image, found a strip at a time."""
    mode = im.mode
    width, height = im.size
    rows = max(1, _STRIP_PIXELS // max(1, width))
    low, high = np.inf, -np.inf
    for top in range(0, height, rows):
        a = np.asarray(im.crop((0, top, width, min(height, top + rows))))
        if a.dtype.kind == "f":
            a = a[np.isfinite(a)]
        if a.size:
            low, high = min(low, float(a.min())), max(high, float(a.max()))
    if low > high:  # empty, or nothing finite
        low = high = 0.0
    if mode.startswith("I;16"):
        offset, gain = 0.0, 1 / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        offset, gain = 0.0, 255.0
    elif low >= 0 and high <= 255:
        offset, gain = 0.0, 1.0
    elif low >= 0 and high <= 65535:
        offset, gain = 0.0, 1 / 257.0
    else:  # an unusual range: stretch it
        offset, gain = low, (255.0 / (high - low) if high > low else 0.0)

    def scale(a: np.ndarray) -> np.ndarray:
        a = np.nan_to_num(a.astype(np.float64), nan=offset, posinf=offset, neginf=offset)
        return np.clip(np.rint((a - offset) * gain), 0, 255).astype(np.uint8)

    return scale


def _sniff(data: bytes) -> str:
    """A sentence saying what a file that is not an image probably is."""
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG drawings are not supported; export it as PNG or JPEG"
    if head.startswith((b"<!doctype", b"<html", b"<head", b"<body")) or b"<html" in head[:512]:
        return "the file is a web page (HTML), not an image"
    if head.startswith(b"%pdf"):
        return "the file is a PDF document, not an image"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "HEIC photos are not supported; export it as JPEG"
    try:
        text = data[:2048].decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        return "the file is text, not an image"
    return "the file is not an image we can read; send a JPEG, PNG, WebP or GIF"


def _signature(data: bytes) -> Optional[str]:
    """The format an image file announces in its first bytes, if it is one we know."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    return "AVIF" if data[4:12] in (b"ftypavif", b"ftypavis") else None


def _too_many_pixels(size: str, pixels: int, limits: IngestLimits) -> str:
    megapixels, limit = pixels / 1e6, limits.max_pixels / 1e6
    return f"the image is {size} {megapixels:.1f} megapixels; the limit is {limit:.1f} megapixels"


def _allowed_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _write_atomically(path: Path, content: bytes) -> None:
    if path.exists():
        # Same content, same file. Touch it: Store.sweep_orphans leaves recently used files alone,
        # so a file about to be recorded again is not swept as an orphan in between.
        try:
            os.utime(path)
            return
        except FileNotFoundError:  # swept a moment ago: write it again
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private; stored images are plain files
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def mb(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def thumbnail_jpeg(data: bytes, side: int = 256, limits: IngestLimits = IngestLimits()) -> bytes:
    """A small upright JPEG of pasted image bytes (at most `side` pixels long), to show beside its answer."""
    img = _downscale(decode_rgb(data, limits), side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
