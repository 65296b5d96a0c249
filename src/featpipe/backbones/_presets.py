"""Named presets for the foundation and modern backbones people compare today, resolved through timm's own
model names and pretrained configs (preprocessing comes from timm's data config, as for every timm backbone).

Each preset fixes the timm model (with its pretrained tag), the pooling of its head-less output
(``token``: the CLS token, ``avg``: the mean over positions, ``map``: the model's attention pooling) and,
where the pretrained resolution is costly on a CPU, the input size the features are taken at.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    arch: str  # timm name with its pretrained tag
    pool: str | None  # timm's global_pool for this model; None: the model's own
    image_size: int | None  # default input size; None: the pretrained config's
    description: str


PRESETS: dict[str, Preset] = {
    "dinov2_vits14": Preset("vit_small_patch14_dinov2.lvd142m", "token", 224,
                            "DINOv2 ViT-S/14 (Meta, self-supervised, LVD-142M), CLS token, 224px, 384-d"),
    "dinov2_vitb14": Preset("vit_base_patch14_dinov2.lvd142m", "token", 224,
                            "DINOv2 ViT-B/14 (Meta, self-supervised, LVD-142M), CLS token, 224px, 768-d"),
    "clip_vitb16": Preset("vit_base_patch16_clip_224.openai", "token", None,
                          "CLIP ViT-B/16 image tower (OpenAI), CLS token before the projection, 224px, 768-d"),
    "siglip_vitb16": Preset("vit_base_patch16_siglip_224.webli", "map", None,
                            "SigLIP ViT-B/16 image tower (Google, WebLI), attention pooling, 224px, 768-d"),
    "convnext_tiny_in22k": Preset("convnext_tiny.fb_in22k_ft_in1k", "avg", None,
                                  "ConvNeXt-T (Meta, ImageNet-22k then 1k), mean pooling, 224px, 768-d"),
    "efficientnetv2_s": Preset("tf_efficientnetv2_s.in21k_ft_in1k", "avg", None,
                               "EfficientNetV2-S (Google, ImageNet-21k then 1k), mean pooling, 300px, 1280-d"),
}
