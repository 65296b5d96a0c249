"""BatchNorm folding and conv + activation fusion of frozen backbones: same features, fewer modules,
trainable nets untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

from featpipe import hardware
from featpipe.backbones import load_backbone, resolve_spec
from featpipe.backbones._fold import ConvAct, _pointwise_op, fold_batchnorm, fuse_conv_activation

from conftest import TINY, TINY_SIZE


def _randomised_bn(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("arch", [TINY, "resnet18", "mobilenetv3_small_050", "tf_efficientnet_lite0"])
def test_folded_model_gives_the_same_outputs(arch):
    model = _randomised_bn(timm.create_model(arch, pretrained=False, num_classes=0))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == n_bn > 0  # timm's BatchNormAct2d and TF "same" convs included
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_fold_leaves_shared_outputs_hooks_and_training_models_alone():
    class TwoUses(nn.Module):  # the conv output also feeds the residual: folding would change it
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert fold_batchnorm(_randomised_bn(TwoUses())) == 0

    class CalledTwice(nn.Module):  # one BatchNorm module after two convs: folding into one breaks the other
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.a(x)) + self.bn(self.b(x))

    assert fold_batchnorm(_randomised_bn(CalledTwice())) == 0
    seq = _randomised_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    seq[1].register_forward_hook(lambda *a: None)  # a layer cut reads this BatchNorm's output
    assert fold_batchnorm(seq) == 1 and isinstance(seq[1], nn.BatchNorm2d) and isinstance(seq[3], nn.Identity)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())


def test_frozen_backbone_folds_and_a_trainable_one_does_not():
    spec = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)
    frozen, trainable = load_backbone(spec), load_backbone(spec, trainable=True)
    assert frozen.folded_bn > 0 and trainable.folded_bn == 0 and trainable.fused_act == 0
    assert frozen.fused_act == 0  # its activations are SiLU: fusing would change the bf16 rounding
    assert any(isinstance(m, nn.BatchNorm2d) for m in trainable.net.modules())
    x = torch.randint(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), dtype=torch.uint8)
    a, b = frozen.forward(x), trainable.forward(x)
    assert abs(a - b).max() <= 1e-4 * max(1.0, abs(b).max())
    # a cut at a BatchNorm keeps that module (its hook), and still gives the unfolded features
    cut = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, layer="blocks.1.0.bn1")
    fc, tc = load_backbone(cut), load_backbone(cut, trainable=True)
    assert isinstance(fc.net.model.get_submodule("blocks.1.0.bn1"), nn.BatchNorm2d)
    assert abs(fc.forward(x) - tc.forward(x)).max() <= 1e-4 * max(1.0, abs(tc.forward(x)).max())


needs_onednn = pytest.mark.skipif(
    _pointwise_op() is None,
    reason="oneDNN cannot run bf16 convolutions on this CPU (or this torch has no fused op); "
    "test_bf16_without_onednn_bf16_runs_the_plain_modules covers the fallback")


def _bf16(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x)


@needs_onednn
@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "resnet18", "mobilenetv3_small_050"])
def test_fused_conv_activation_gives_the_same_bits(arch):
    model = _randomised_bn(timm.create_model(arch, pretrained=False, num_classes=0))
    fold_batchnorm(model)
    fused = copy.deepcopy(model)
    n = fuse_conv_activation(fused)
    assert n == sum(isinstance(m, ConvAct) for m in fused.modules()) > 0
    x = torch.randn(2, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    assert torch.equal(_bf16(fused, x), _bf16(model, x))  # bf16: one oneDNN conv with the clamp as post-op
    with torch.inference_mode():
        assert torch.equal(fused(x), model(x))  # fp32 runs the two modules as before


@needs_onednn
def test_fusion_leaves_shared_activations_other_activations_and_hooks_alone():
    class SharedReLU(nn.Module):  # torchvision-style: one ReLU module after the conv and after the sum
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.relu(self.relu(self.conv(x)) + x)

    m = SharedReLU().eval()
    x = torch.randn(1, 3, 8, 8)
    ref = _bf16(m, x)
    assert fuse_conv_activation(m) == 0 and torch.equal(_bf16(m, x), ref)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3),
                        nn.Identity(), nn.ReLU()).eval()
    seq[6].register_forward_hook(lambda *a: None)  # a layer cut reads this activation's output
    ref = _bf16(seq, x)
    assert fuse_conv_activation(seq) == 1 and isinstance(seq[0], ConvAct) and isinstance(seq[1], nn.Identity)
    assert isinstance(seq[3], nn.SiLU) and isinstance(seq[6], nn.ReLU)  # SiLU's rounding would differ
    assert torch.equal(_bf16(seq, x), ref)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_activation(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).train())


@needs_onednn
def test_frozen_lite0_on_cpu_runs_fused_convolutions():
    lite0 = load_backbone(resolve_spec("efficientnet_lite0", image_size=64, precision="bf16"))
    assert lite0.fused_act == 33  # every conv + ReLU6 pair, the TF "same"-padding ones included
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    unfused = copy.deepcopy(lite0)
    for m in list(unfused.net.modules()):
        if isinstance(m, ConvAct):  # back to the conv alone, its activation where the Identity went
            m.forward = lambda x, m=m: m.act(m.conv(x))
    assert (lite0.forward(x) == unfused.forward(x)).all()


@pytest.fixture
def no_onednn_bf16(monkeypatch):
    """This process answers as a CPU whose oneDNN cannot run bf16 (AVX2 only), whatever CPU it is on."""
    monkeypatch.setenv(hardware.ONEDNN_BF16_ENV, "0")
    assert not hardware.onednn_bf16()


@pytest.mark.parametrize("name", ["efficientnet_lite0", TINY])
def test_bf16_without_onednn_bf16_runs_the_plain_modules(no_onednn_bf16, name):
    spec = resolve_spec(name, pretrained=name != TINY, image_size=64, precision="bf16")
    backbone = load_backbone(spec)
    assert backbone.fused_act == 0 and not any(isinstance(m, ConvAct) for m in backbone.net.modules())
    plain = load_backbone(spec, trainable=True)  # unfolded, unfused: the net as built
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    out, ref = backbone.forward(x), plain.forward(x)
    assert np.isfinite(out).all()
    # folding moves bf16 rounding around, so the two agree to bf16's precision, not bit for bit
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99, cos


def test_a_convact_built_without_onednn_bf16_runs_its_two_modules(no_onednn_bf16):
    m = ConvAct(nn.Conv2d(3, 4, 3), nn.ReLU6()).eval()
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(_bf16(m, x), _bf16(nn.Sequential(m.conv, m.act), x))


def test_embed_bf16_on_a_cpu_without_onednn_bf16_says_so_and_embeds(no_onednn_bf16, image_folder, tmp_path):
    from click.testing import CliRunner

    from featpipe.cli import main

    r = CliRunner().invoke(main, ["embed", "--data", str(image_folder), "--backbone", TINY, "--no-pretrained",
                                  "--image-size", str(TINY_SIZE), "--precision", "bf16",
                                  "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "plain autocast" in r.output and "slower than fp32" in r.output
    assert "embedded 36 images" in r.output and "Traceback" not in r.output
