"""--weights state dicts: torchvision and timm layouts mapped by name; Keras VGGFace conversion."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.errors import BackboneError

SIZE = 64  # small inputs keep VGG16 on CPU fast; both VGGs pool the 2x2 map up to 7x7 the same way


def _batch(seed: int = 0, n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: np.ndarray, b: torch.Tensor) -> None:
    b = b.detach().numpy()
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.fixture(scope="module")
def torchvision_vgg16(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(3)
    net = torchvision.models.vgg16().eval()
    path = tmp_path_factory.mktemp("tv") / "vgg16_tv.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.slow
def test_torchvision_vgg16_state_dict_gives_torchvision_fc7_features(torchvision_vgg16):
    net, path = torchvision_vgg16
    backbone = load_backbone(resolve_spec("vgg16", weights=path, image_size=SIZE))
    x = _batch()
    with torch.inference_mode():
        fc7 = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1))  # fc6, relu, drop, fc7, relu
    _close(backbone.forward(x), fc7)
    assert backbone.feature_dim == 4096


def test_torchvision_resnet18_state_dict_gives_torchvision_pooled_features(tmp_path):
    torch.manual_seed(4)
    net = torchvision.models.resnet18().eval()
    for m in net.modules():  # non-trivial running statistics, so a mis-assigned BN tensor shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "r18.pth")
    backbone = load_backbone(resolve_spec("resnet18", weights=tmp_path / "r18.pth", image_size=SIZE))
    net.fc = torch.nn.Identity()
    x = _batch(1)
    with torch.inference_mode():
        _close(backbone.forward(x), net(x))
    # the key order of the file does not matter, only the names
    items = list(net.state_dict().items())
    random.Random(0).shuffle(items)
    torch.save(dict(items), tmp_path / "shuffled.pth")
    shuffled = load_backbone(resolve_spec("resnet18", weights=tmp_path / "shuffled.pth", image_size=SIZE))
    with torch.inference_mode():
        _close(shuffled.forward(x), net(x))


@pytest.mark.slow
def test_timm_layout_vgg_with_classifier_loads_by_name(tmp_path):
    import timm

    torch.manual_seed(6)
    full = timm.create_model("vgg11", num_classes=10).eval()
    torch.save(full.state_dict(), tmp_path / "vgg11_timm.pth")
    backbone = load_backbone(resolve_spec("vgg11", weights=tmp_path / "vgg11_timm.pth", image_size=SIZE))
    x = _batch(2)
    with torch.inference_mode():
        _close(backbone.forward(x), full.forward_head(full.forward_features(x), pre_logits=True))


def test_renamed_keys_are_refused_with_a_line_naming_them(tmp_path):
    torch.manual_seed(4)
    sd = torchvision.models.resnet18().state_dict()
    # every key renamed: the old loader mapped such files by position, silently
    torch.save({"backbone." + k: v for k, v in sd.items()}, tmp_path / "renamed.pth")
    with pytest.raises(BackboneError) as e:
        load_backbone(resolve_spec("resnet18", weights=tmp_path / "renamed.pth", image_size=SIZE))
    msg = str(e.value)
    assert "\n" not in msg and "unmatched keys in the file: backbone.conv1.weight" in msg
    # one stray key is named too
    torch.save({**sd, "layer9.0.conv1.weight": sd["conv1.weight"]}, tmp_path / "stray.pth")
    with pytest.raises(BackboneError, match=r"unmatched keys in the file: layer9\.0\.conv1\.weight"):
        load_backbone(resolve_spec("resnet18", weights=tmp_path / "stray.pth", image_size=SIZE))
    # a tensor of the wrong shape under the right name
    torch.save({**sd, "fc.weight": sd["fc.weight"], "conv1.weight": sd["conv1.weight"][:, :1]},
               tmp_path / "shape.pth")
    with pytest.raises(BackboneError, match=r"wrong shapes: conv1\.weight"):
        load_backbone(resolve_spec("resnet18", weights=tmp_path / "shape.pth", image_size=SIZE))


@pytest.mark.slow
def test_convolutions_only_vgg_file_needs_a_cut_inside_the_convolutions(tmp_path):
    torch.manual_seed(7)
    net = torchvision.models.vgg11().eval()
    torch.save(net.features.state_dict(prefix="features."), tmp_path / "notop.pth")
    with pytest.raises(BackboneError, match="convolutions-only file.*--layer block5_pool"):
        load_backbone(resolve_spec("vgg11", weights=tmp_path / "notop.pth", image_size=SIZE))
    cut = load_backbone(resolve_spec("vgg11", weights=tmp_path / "notop.pth", image_size=SIZE,
                                     layer="block5_pool"))
    x = _batch(3)
    with torch.inference_mode():
        _close(cut.forward(x), net.features(x).mean(dim=(2, 3)))
