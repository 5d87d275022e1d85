"""Peak memory of one ingest over a corpus of large and hostile images: small files that decode to 40
megapixels in deep greyscale, float, transparency and CMYK. Each is ingested in a fresh process, whose
peak resident memory (reset just before the call) must stay below 300 MB above what it was."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIDE = 6300  # 6300 x 6290 = 39.6 megapixels, just under the 40-megapixel limit
DEEP = 5470  # 5470 x 5460 = 29.9 megapixels, just under the limit for 32-bit greyscale (30)
LIMIT_MB = 300

MEASURE = r"""
import json, sys
from pathlib import Path
from imgcls.ingest import ingest

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
data = Path(sys.argv[1]).read_bytes()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to what is resident now
base = kb("VmRSS:")
out = ingest(data, sys.argv[2])
print(json.dumps({"ok": out.ok, "reason": out.reason, "detail": out.detail, "peak_mb": (kb("VmHWM:") - base) / 1024}))
"""


def gradient(dtype, scale: float, step: int = 1, side: int = SIDE) -> np.ndarray:
    """A diagonal ramp (in steps of `step` pixels): compresses to little, decodes to side x (side - 10) pixels."""
    rows, cols = np.ogrid[: side - 10, :side]
    return ((rows + cols) // step * step * scale).astype(dtype)


def build(kind: str, path: Path) -> Path:
    if kind == "grey16.png":
        Image.fromarray(gradient(np.uint16, 5.0)).save(path)
    elif kind == "float-39mp.tif":  # refused before decoding: more pixels than 32-bit greyscale may have
        Image.fromarray(gradient(np.float32, 1 / 12600, step=400)).save(path, compression="tiff_deflate")
    elif kind == "float.tif":
        Image.fromarray(gradient(np.float32, 1 / 11000, step=400, side=DEEP)).save(path, compression="tiff_deflate")
    elif kind == "float-rotated.tif":  # EXIF orientation 6: the TIFF decoder turns it upright, a full-size copy
        Image.fromarray(gradient(np.float32, 1 / 11000, step=400, side=DEEP)).save(
            path, compression="tiff_deflate", tiffinfo={274: 6})
    elif kind == "int32.tif":
        Image.fromarray(gradient(np.int32, 300.0, step=400, side=DEEP)).save(path, compression="tiff_deflate")
    elif kind == "rgba.png":
        a = gradient(np.uint8, 0.02)
        Image.fromarray(np.dstack([a, a, 255 - a, a])).save(path, compress_level=1)
    elif kind == "palette-transparent.png":
        im = Image.fromarray(gradient(np.uint8, 0.02)).convert("P")
        im.info["transparency"] = 0
        im.save(path, transparency=0, compress_level=1)
    elif kind == "rgb.png":
        a = gradient(np.uint8, 0.02)
        Image.fromarray(np.dstack([a, 255 - a, a])).save(path, compress_level=1)
    elif kind == "cmyk.jpg":
        a = gradient(np.uint8, 0.02)
        cmyk = np.ascontiguousarray(np.dstack([a, 255 - a, a, a // 2]))
        Image.frombytes("CMYK", (SIDE, SIDE - 10), cmyk.tobytes()).save(path, quality=80)
    return path


CORPUS = ["grey16.png", "float-39mp.tif", "float.tif", "float-rotated.tif", "int32.tif", "rgba.png", "palette-transparent.png", "rgb.png", "cmyk.jpg"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory-corpus")
    return {kind: build(kind, root / kind) for kind in CORPUS}


@pytest.mark.parametrize("kind", CORPUS)
def test_one_ingest_stays_under_300_mb_above_its_baseline(corpus, kind, tmp_path):
    path = corpus[kind]
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(tmp_path / "images")], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{kind}: {path.stat().st_size / 1024:.0f} KB on disk, peak {result['peak_mb']:.0f} MB above baseline")
    assert result["ok"] or (kind == "float-39mp.tif" and "32-bit greyscale" in result["detail"]), result
    assert result["peak_mb"] < LIMIT_MB, result
