"""BatchNorm folding of frozen backbones: same features, fewer modules, trainable nets untouched."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.backbones._fold import fold_batchnorm

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
    seq = _randomised_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    seq[1].register_forward_hook(lambda *a: None)  # a layer cut reads this BatchNorm's output
    assert fold_batchnorm(seq) == 1 and isinstance(seq[1], nn.BatchNorm2d) and isinstance(seq[3], nn.Identity)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())


def test_frozen_backbone_folds_and_a_trainable_one_does_not():
    spec = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)
    frozen, trainable = load_backbone(spec), load_backbone(spec, trainable=True)
    assert frozen.folded_bn > 0 and trainable.folded_bn == 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in trainable.net.modules())
    x = torch.randint(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), dtype=torch.uint8)
    a, b = frozen.forward(x), trainable.forward(x)
    assert abs(a - b).max() <= 1e-4 * max(1.0, abs(b).max())
    # a cut at a BatchNorm keeps that module (its hook), and still gives the unfolded features
    cut = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, layer="blocks.1.0.bn1")
    fc, tc = load_backbone(cut), load_backbone(cut, trainable=True)
    assert isinstance(fc.net.model.get_submodule("blocks.1.0.bn1"), nn.BatchNorm2d)
    assert abs(fc.forward(x) - tc.forward(x)).max() <= 1e-4 * max(1.0, abs(tc.forward(x)).max())
