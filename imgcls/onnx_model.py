"""The trained model as ONNX, for light prediction on the CPU: exported after training, run with ONNX Runtime.

    # training side (torch and fastai), after learn.export:
    export_onnx(learn, out_dir / "model.onnx")

    # prediction side: numpy, Pillow and onnxruntime only, no torch or fastai
    model = OnnxModel(data)                       # the file's bytes, already checked by sha256
    probs = model.probabilities([pil_image, ...]) # rows in model.vocab order

The graph takes uint8 RGB pixels, NHWC, at the model's input size, and returns class
probabilities: the scaling to 0..1, fastai's normalisation and the softmax are folded into
it. What happens before that is the learner's own validation item transform (`Resize` with
its centre crop or squish, or `RandomResizedCrop`'s validation path), redone here with
Pillow exactly as fastai does it, and described in the file's metadata ("imgcls" key) with
the vocabulary. Tests check that the labels and probabilities match `Learner.predict`.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

META_KEY = "imgcls"
_BILINEAR = Image.Resampling.BILINEAR


# ---------------------------------------------------------------- export (needs torch and fastai)


def item_transform(learn) -> dict[str, Any]:
    """The learner's validation item transform, as plain data; ValueError when it is one we cannot redo."""
    from fastai.vision.augment import RandomResizedCrop, Resize, ResizeMethod

    for tfm in learn.dls.valid.after_item.fs:
        if isinstance(tfm, RandomResizedCrop):
            return {"kind": "random_resized_crop", "size": [int(s) for s in tfm.size], "val_xtra": float(tfm.val_xtra)}
        if isinstance(tfm, Resize):
            if tfm.method not in (ResizeMethod.Crop, ResizeMethod.Squish):
                raise ValueError(f"Resize with method {tfm.method!r} is not supported")
            return {"kind": "resize", "size": [int(s) for s in tfm.size], "method": str(tfm.method),
                    "pcts": [0.5, 0.5]}
    raise ValueError("the learner has no Resize or RandomResizedCrop item transform")


def export_onnx(learn, path: str | Path) -> Path:
    """Write the learner's model as ONNX with the normalisation and softmax folded in; returns the path."""
    import torch

    from fastai.data.transforms import Normalize

    resize = item_transform(learn)
    norm = next((t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)), None)
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).reshape(1, 3, 1, 1) if norm else torch.zeros(1, 3, 1, 1)
    std = torch.as_tensor(norm.std, dtype=torch.float32).reshape(1, 3, 1, 1) if norm else torch.ones(1, 3, 1, 1)
    model = _Folded(learn.model, mean.cpu(), std.cpu()).eval()
    sw, sh = resize["size"]  # (width, height), as fastai keeps sizes for Pillow
    dummy = torch.zeros(1, sh, sw, 3, dtype=torch.uint8)
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, input_names=["pixels"],
                          output_names=["probabilities"], dynamic_axes={"pixels": {0: "n"}, "probabilities": {0: "n"}},
                          opset_version=17)
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps({"vocab": [str(v) for v in learn.dls.vocab], "resize": resize})
    onnx.save(proto, str(path))
    return path


def _folded_class():
    import torch

    class Folded(torch.nn.Module):
        def __init__(self, model, mean, std) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, pixels):
            x = pixels.permute(0, 3, 1, 2).float() / 255.0
            return torch.softmax(self.model((x - self.mean) / self.std), dim=1)

    return Folded


def _Folded(model, mean, std):  # noqa: N802 - a class made on demand, so this module imports without torch
    import copy

    return _folded_class()(copy.deepcopy(model).cpu().float(), mean, std)


# ---------------------------------------------------------------- prediction (numpy, Pillow, onnxruntime)


class OnnxModel:
    """An exported model loaded in ONNX Runtime on the CPU."""

    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map[META_KEY])
        self.vocab: list[str] = list(meta["vocab"])
        self.resize: dict[str, Any] = meta["resize"]

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities, one row per RGB image, columns in vocab order."""
        batch = np.stack([prepare(img, self.resize) for img in images])
        return self.session.run(None, {"pixels": batch})[0]


def prepare(img: Image.Image, resize: dict[str, Any]) -> np.ndarray:
    """fastai's validation item transform on an RGB image, as uint8 HWC pixels. Sizes are (width, height), as
    fastai keeps them for Pillow."""
    sw, sh = resize["size"]
    w, h = img.size
    if resize["kind"] == "random_resized_crop":  # squish to size + extra, then a centre crop
        xtra = int(np.ceil(max(sw, sh) * resize["val_xtra"] / 8) * 8)
        out = img.resize((sw + xtra, sh + xtra), _BILINEAR)
        if xtra:
            left, top = xtra // 2, xtra // 2
            out = out.crop((left, top, left + sw, top + sh))
    elif resize.get("method") == "squish":
        out = img.resize((sw, sh), _BILINEAR)
    else:  # crop: the largest centred box of the target's shape, resized
        m = w / sw if (w / sw) < (h / sh) else h / sh
        cw, ch = int(m * sw), int(m * sh)
        left, top = int(resize["pcts"][0] * (w - cw)), int(resize["pcts"][1] * (h - ch))
        out = img.crop((left, top, left + cw, top + ch)).resize((sw, sh), _BILINEAR)
    return np.asarray(out.convert("RGB"), dtype=np.uint8)
