"""The ONNX copy of a run's model: the same answers as Learner.predict, fastai's validation transforms redone
exactly, checked by sha256, and a prediction process that never imports torch or fastai."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastai.vision.augment import RandomResizedCrop, Resize

from imgcls.errors import ModelRefused
from imgcls.ingest import decode_rgb
from imgcls.onnx_model import item_transform, prepare
from imgcls.predict import Predictor, decode_image, load_verified
from imgcls.train import build_dataloaders, sha256_file
from imgcls.types import TrainItem, TrainSpec

from ..conftest import jpeg_bytes, make_image

ROOT = Path(__file__).resolve().parents[2]


def every_image(trained) -> list[bytes]:
    """Every image of the run (training and validation), and fresh ones of odd shapes it never saw."""
    stored = [trained.store.image_path(trained.store.image(i)).read_bytes() for i, _ in trained.run["snapshot"]["split"]]
    fresh = []
    for k, kind in enumerate(("circles", "squares", "triangles") * 2):
        img = make_image(kind, seed=20_000 + k, size=160).resize((160 + 40 * k, 120 + 10 * k))
        fresh.append(jpeg_bytes(img))
    for k, kind in enumerate(("circles", "squares", "triangles")):  # big photos: decoded at a DCT scale
        fresh.append(jpeg_bytes(make_image(kind, seed=30_000 + k, size=160).resize((1500 + 333 * k, 1100 + 77 * k))))
    return stored + fresh


def test_the_run_records_an_onnx_copy_with_its_checksum(trained):
    run = trained.run
    assert run["onnx_path"] and Path(run["onnx_path"]).name == "model.onnx"
    assert sha256_file(run["onnx_path"]) == run["onnx_sha256"]
    assert Path(run["model_path"]).name == "model.pkl"  # still what /export hands out


def test_onnx_runtime_gives_learner_predicts_top3_on_every_image(trained):
    run = trained.run
    learn = load_verified(run["model_path"], run["model_sha256"])
    predictor = Predictor()
    images = every_image(trained)
    ours = predictor.predict_many(run["model_path"], run["model_sha256"], images, k=3,
                                  onnx_path=run["onnx_path"], onnx_sha256=run["onnx_sha256"])
    worst = 0.0
    for data, pred in zip(images, ours):
        _, _, probs = learn.predict(decode_image(data))
        expected = sorted(((float(p), str(v)) for v, p in zip(learn.dls.vocab, probs)), reverse=True)[:3]
        assert [name for name, _ in pred.top] == [name for _, name in expected]
        for (name, p), (q, _) in zip(pred.top, expected):
            worst = max(worst, abs(p - q))
    assert worst < 1e-3, worst
    print(f"\n{len(images)} images: the same top 3; largest probability difference {worst:.2e}")


@pytest.mark.parametrize("item_tfm", ["resize", "squish", "random_resized_crop"])
@pytest.mark.parametrize("shape", [(200, 120), (90, 170), (128, 128)])
def test_the_validation_transform_is_redone_pixel_for_pixel(tmp_path, item_tfm, shape):
    img = make_image("triangles", seed=5, size=200).resize(shape)
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes(img))
    items = tuple(TrainItem(image_id=i, path=str(path), label=label, valid=i % 2 == 1)
                  for i, label in enumerate(["circles", "squares"] * 2))
    spec = TrainSpec(items=items, labels=("circles", "squares"), out_dir=str(tmp_path), size=64, item_tfm=item_tfm,
                     bs=2, num_workers=0)
    dls = build_dataloaders(spec, "cpu", list(items))

    class Learn:  # what item_transform reads of a learner
        pass
    learn = Learn()
    learn.dls = dls
    resize = item_transform(learn)
    tfm = next(t for t in dls.valid.after_item.fs if isinstance(t, (Resize, RandomResizedCrop)))
    theirs = np.asarray(tfm(dls.valid_ds[0][0], split_idx=1))  # fastai's validation path, as predict runs it
    ours = prepare(decode_rgb(path.read_bytes()), resize)
    assert ours.shape == theirs.shape == (64, 64, 3)
    assert np.array_equal(ours, theirs)


def test_a_changed_onnx_file_is_refused(trained, tmp_path):
    run = trained.run
    copy = tmp_path / "model.onnx"
    data = bytearray(Path(run["onnx_path"]).read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelRefused, match="changed"):
        Predictor().predict(run["model_path"], run["model_sha256"], jpeg_bytes(make_image("circles", 1)),
                            onnx_path=str(copy), onnx_sha256=run["onnx_sha256"])


def test_the_prediction_worker_imports_neither_torch_nor_fastai(trained):
    run = trained.run
    image = Path(trained.photos) / "circles"
    first = sorted(image.iterdir())[0]
    code = ("import sys, json\n"
            "from imgcls.predict import warm_up_worker, predict_in_worker\n"
            "warm_up_worker()\n"
            f"[p] = predict_in_worker({run['model_path']!r}, {run['model_sha256']!r}, [open({str(first)!r}, 'rb').read()],"
            f" 3, 1, {run['onnx_path']!r}, {run['onnx_sha256']!r})\n"
            "print(json.dumps([p.label, sorted(m for m in ('torch', 'fastai', 'timm', 'torchvision') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    label, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [] and label in ("circles", "squares", "triangles")
    assert Image.open(first).size  # (the photo exists)
