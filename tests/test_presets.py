"""Foundation / modern backbone presets: each preset's timm architecture, run here with random weights at a
small input, gives the documented feature size, records its pooling in the cache, and takes its
preprocessing from timm's data config (the model's own pretrained config: CLIP's mean is CLIP's)."""

from __future__ import annotations

import pytest
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_INCEPTION_MEAN, OPENAI_CLIP_MEAN

from featpipe.backbones import PRESETS, describe_backbones, resolve_spec
from featpipe.data import load_dataset
from featpipe.features.cache import FeatureCache
from featpipe.features.embed import embed_dataset

from conftest import make_class_folders

# preset -> (small input size its patches / strides allow, feature size, mean timm's config gives)
CASES = {
    "dinov2_vits14": (28, 384, IMAGENET_DEFAULT_MEAN),
    "dinov2_vitb14": (28, 768, IMAGENET_DEFAULT_MEAN),
    "clip_vitb16": (32, 768, OPENAI_CLIP_MEAN),
    "siglip_vitb16": (32, 768, IMAGENET_INCEPTION_MEAN),  # SigLIP normalises to [-1, 1]: mean 0.5
    "convnext_tiny_in22k": (32, 768, IMAGENET_DEFAULT_MEAN),
    "efficientnetv2_s": (32, 1280, IMAGENET_INCEPTION_MEAN),  # the TF port normalises to [-1, 1]
}


def test_every_preset_is_tested_and_listed():
    assert set(CASES) == set(PRESETS)
    rows = {r["name"]: r for r in describe_backbones()}
    for name, preset in PRESETS.items():
        assert rows[name]["source"].startswith("hub") and isinstance(rows[name]["offline"], bool)
        assert rows[name]["description"].startswith(preset.description)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_preset_embeds_with_its_pooling_size_and_preprocessing(name, tmp_path, one_thread):
    size, dim, mean = CASES[name]
    spec = resolve_spec(name, pretrained=False, image_size=size)
    assert spec.arch == PRESETS[name].arch and spec.pool == PRESETS[name].pool
    data = load_dataset(make_class_folders(tmp_path / "imgs", {"a": 2, "b": 2}, size=size))
    res = embed_dataset(data, spec, cache_dir=tmp_path / "cache", progress=False)
    c = FeatureCache.open(res.path)
    assert c.features.shape == (4, dim)
    assert c.backbone["pool"] == PRESETS[name].pool and c.backbone["arch"] == PRESETS[name].arch
    pre = c.config["preprocessing"]
    assert pre["mean"] == pytest.approx(list(mean)) and pre["input_size"][-1] == size


def test_preset_default_size_and_hub_weights_fail_fast_offline(monkeypatch):
    spec = resolve_spec("dinov2_vits14", pretrained=False)
    assert spec.image_size == 224  # DINOv2's pretrained 518 px would cost 5x the compute on a CPU
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from featpipe.backbones import load_backbone
    from featpipe.errors import BackboneError

    with pytest.raises(BackboneError, match="are not available: offline mode is set"):
        load_backbone(resolve_spec("clip_vitb16"), "cpu")
