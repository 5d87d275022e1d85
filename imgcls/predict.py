"""Classify image bytes with a model this project exported.

Runs record two files of the same model: the fastai pickle (`model.pkl`, what /export hands
out) and an ONNX copy (`model.onnx`). Each is loaded only after its sha256 matches the one the
runs table recorded when the model was trained. Loaded models stay cached per path.

With the ONNX copy, prediction needs only Pillow, numpy and ONNX Runtime: no torch, no fastai
(imgcls.onnx_model). Without it (runs from before it existed, or a failed export) the
pickle is loaded with fastai, and its validation transforms and model run directly, skipping
Learner.predict's callback machinery. Tests check both give Learner.predict's answer.
"""
from __future__ import annotations

import hashlib
import io
import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .errors import InvalidInput, ModelRefused
from .types import Prediction

log = logging.getLogger(__name__)


def decode_image(data: bytes):
    """Image bytes -> a PILImage prepared as training images were (see ingest), or InvalidInput."""
    from fastai.vision.core import PILImage

    from .ingest import decode_rgb

    return PILImage.create(decode_rgb(data))


class Predictor:
    """Loads verified models once and classifies images with them."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self, model_path: str, expected_sha256: str):
        """The cached Learner for this file, loading it if the sha256 matches."""
        key = str(Path(model_path).resolve())
        with self._lock:
            cached = self._models.get(key)
            if cached is not None and cached[0] == expected_sha256:
                return cached[1]
            learn = load_verified(model_path, expected_sha256)
            self._models[key] = (expected_sha256, learn)
            return learn

    def load_onnx(self, onnx_path: str, expected_sha256: str):
        """The cached OnnxModel for this file, loading it if the sha256 matches."""
        from .onnx_model import OnnxModel

        key = "onnx:" + str(Path(onnx_path).resolve())
        with self._lock:
            cached = self._models.get(key)
            if cached is not None and cached[0] == expected_sha256:
                return cached[1]
            try:
                model = OnnxModel(read_verified(onnx_path, expected_sha256))
            except ModelRefused:
                raise
            except Exception as exc:  # a file from an incompatible version
                log.exception("ONNX model %s could not be loaded", onnx_path)
                raise ModelRefused(f"The model could not be loaded ({type(exc).__name__}); retrain to make a new "
                                   "one.") from exc
            self._models[key] = (expected_sha256, model)
            return model

    def _onnx_or_none(self, onnx_path: Optional[str], onnx_sha256: Optional[str]):
        """The run's ONNX model if it has a usable one; None means: use the pickle. A file that changed is refused
        (ModelRefused), never silently replaced; one that is gone, or that ONNX Runtime cannot load, falls back."""
        if not (onnx_path and onnx_sha256 and Path(onnx_path).is_file()):
            return None
        try:
            return self.load_onnx(onnx_path, onnx_sha256)
        except ModelRefused as exc:
            if "changed" in str(exc):
                raise
            log.warning("the ONNX model %s cannot be used (%s); using the fastai model", onnx_path, exc)
            return None

    def predict(self, model_path: str, expected_sha256: str, data: bytes, *, k: int = 3,
                run_id: Optional[int] = None, onnx_path: Optional[str] = None,
                onnx_sha256: Optional[str] = None) -> Prediction:
        return self.predict_many(model_path, expected_sha256, [data], k=k, run_id=run_id, onnx_path=onnx_path,
                                 onnx_sha256=onnx_sha256)[0]

    def predict_many(self, model_path: str, expected_sha256: str, images: Sequence[bytes], *, k: int = 3,
                     run_id: Optional[int] = None, onnx_path: Optional[str] = None,
                     onnx_sha256: Optional[str] = None) -> list[Prediction]:
        """The top k labels of each image. With the run's ONNX copy (and its sha256) it is used, needing no torch;
        a run without one, or whose ONNX file is gone, uses the fastai pickle."""
        if k < 1:
            raise InvalidInput("Ask for at least one label (k >= 1).")
        model = self._onnx_or_none(onnx_path, onnx_sha256)
        if model is not None:
            from .ingest import decode_rgb

            probs = model.probabilities([decode_rgb(data) for data in images])
            labels = model.vocab
        else:
            learn = self.load(model_path, expected_sha256)
            probs = fast_probabilities(learn, [decode_image(data) for data in images]).float().numpy()
            labels = [str(v) for v in learn.dls.vocab]
        out = []
        for row in probs:
            idx = np.argsort(-row, kind="stable")[:min(k, len(labels))]
            top = tuple((labels[int(i)], float(row[i])) for i in idx)
            out.append(Prediction(label=top[0][0], probability=top[0][1], top=top, run_id=run_id))
        return out

    def forget(self, model_path: Optional[str] = None) -> None:
        with self._lock:
            if model_path is None:
                self._models.clear()
            else:
                self._models.pop(str(Path(model_path).resolve()), None)


def load_verified(model_path: str, expected_sha256: str):
    """load_learner, but only for the bytes whose sha256 the runs table recorded.

    The file is read once and the checked bytes are what gets unpickled, so a file swapped
    after the check is never loaded. Models are loaded on the CPU: that keeps GPU memory for
    training and works whatever device the model was trained on.
    """
    data = read_verified(model_path, expected_sha256)
    import torch
    from fastai.learner import load_learner

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*insecure pickle.*")  # the sha256 check above is our guard
            learn = load_learner(io.BytesIO(data), cpu=True)
    except Exception as exc:  # a model from an incompatible version of the libraries
        log.exception("model %s could not be loaded", model_path)
        raise ModelRefused(f"The model could not be loaded ({type(exc).__name__}); retrain to make a new one.") from exc
    learn.model.eval()
    learn.model.to(memory_format=torch.channels_last)  # faster convolutions, same results
    return learn


def read_verified(model_path: str, expected_sha256: str) -> bytes:
    """The file's bytes, read once, if their sha256 is the recorded one; ModelRefused otherwise."""
    path = Path(model_path)
    if not expected_sha256:
        raise ModelRefused("This run has no recorded model checksum, so its model will not be loaded.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelRefused(f"The model file {path.name} is missing or unreadable; retrain to make a new one.") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        log.warning("model %s sha256 %s does not match the recorded %s", path, actual, expected_sha256)
        raise ModelRefused("The model file has changed since it was trained, so it will not be loaded; retrain.")
    return data


def fast_probabilities(learn, pils: list):
    """Class probabilities for PIL images: the learner's validation transforms, then one forward pass."""
    import torch

    dl = learn.dls.test_dl(pils, num_workers=0, bs=max(1, len(pils)))
    batch = dl.one_batch()
    xb = batch[0] if isinstance(batch, (tuple, list)) else batch
    xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = learn.model(xb)
    activation = getattr(learn.loss_func, "activation", None)
    return activation(logits) if activation is not None else torch.softmax(logits, dim=1)


# ---------------------------------------------------------------- a persistent worker process
#
# A service keeps one process (e.g. ProcessPoolExecutor(1, initializer=warm_up_worker)) and
# calls predict_in_worker there: the process keeps its models cached between calls.

_worker_predictor: Optional[Predictor] = None


def warm_up_worker(parent_pid: Optional[int] = None) -> None:
    """A pool initializer: import ONNX Runtime now (not torch or fastai: a run's ONNX copy needs neither), so
    the first prediction does not pay for it; exit with the parent (`initargs=(os.getpid(),)`)."""
    global _worker_predictor
    from .jobs import worker_init

    worker_init(parent_pid)
    try:
        import onnxruntime  # noqa: F401  (the import is the warm-up)
    except ImportError:  # predictions then use the fastai pickle (slower to load); nothing breaks
        log.warning("onnxruntime is not installed; predictions will load the fastai models")
    from . import ingest, onnx_model  # noqa: F401

    _worker_predictor = _worker_predictor or Predictor()


def predict_in_worker(model_path: str, expected_sha256: str, images: Sequence[bytes], k: int = 3,
                      run_id: Optional[int] = None, onnx_path: Optional[str] = None,
                      onnx_sha256: Optional[str] = None) -> list[Prediction]:
    """Predictor.predict_many with this process's cached models."""
    global _worker_predictor
    _worker_predictor = _worker_predictor or Predictor()
    return _worker_predictor.predict_many(model_path, expected_sha256, images, k=k, run_id=run_id,
                                          onnx_path=onnx_path, onnx_sha256=onnx_sha256)
