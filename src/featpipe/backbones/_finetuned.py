"""``finetuned:RUN``: the backbone part of a ``featpipe finetune`` run, embeddable like any backbone.

The run's best checkpoint (``RUN/best.pt``) holds the base backbone's spec, the preprocessing it was
trained with and the trained weights; its file hash is the spec's ``weights_id``, so caches made with
one checkpoint are never reused for another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from featpipe.backbones._base import FINETUNED, BackboneSpec
from featpipe.errors import BackboneError

CHECKPOINT_FORMAT = "featpipe-finetuned"
BEST_CHECKPOINT = "best.pt"


def checkpoint_file(path: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (must exist)."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        p = p / BEST_CHECKPOINT
    if not p.is_file():
        raise BackboneError(f"no fine-tuned checkpoint at {p} (run featpipe finetune --out {p.parent} first)")
    return p


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a best checkpoint written by ``featpipe finetune`` (tensors and plain values only)."""
    p = checkpoint_file(path)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is a bad checkpoint for the user
        raise BackboneError(f"cannot read fine-tuned checkpoint {p}: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise BackboneError(f"{p} is not a featpipe fine-tune checkpoint")
    return ck


def finetuned_spec(target: str, *, layer: str | None, image_size: int | None, precision: str,
                   seed: int, **options: Any) -> BackboneSpec:
    """Spec for ``finetuned:RUN``: the run's layer and input size unless overridden."""
    from featpipe.checksum import file_id

    path = checkpoint_file(target.removeprefix(FINETUNED))
    base = read_checkpoint(path)["base_spec"]
    run = path.parent.name if path.name == BEST_CHECKPOINT else path.stem
    return BackboneSpec(
        name=f"finetuned-{run}", kind="finetuned", arch=str(base["arch"]), weights="finetuned",
        weights_id=file_id(path), weights_path=str(path), layer=layer or base.get("layer"),
        image_size=image_size or base.get("image_size"), precision=precision, seed=seed, **options,
    )


def base_network(base: dict[str, Any]) -> nn.Module:
    """The base architecture with its random init (weights are loaded over it)."""
    if base["kind"] == "scratch":
        from featpipe.backbones._scratch import build_scratch

        return build_scratch(base["arch"], int(base.get("seed", 0)))
    import timm

    return timm.create_model(base["arch"], pretrained=False, num_classes=0)


def load_finetuned(spec: BackboneSpec) -> tuple[nn.Module, dict[str, Any]]:
    """(trained model with the run's weights, data config at the spec's input size)."""
    from featpipe.checksum import file_id

    assert spec.weights_path is not None
    if file_id(checkpoint_file(spec.weights_path)) != spec.weights_id:
        raise BackboneError(f"fine-tuned checkpoint {spec.weights_path} changed since it was recorded "
                            f"({spec.weights_id})")
    ck = read_checkpoint(spec.weights_path)
    model = base_network(ck["base_spec"])
    try:
        model.load_state_dict(ck["backbone_state"])
    except RuntimeError as e:
        raise BackboneError(f"checkpoint {spec.weights_path} does not fit {spec.arch}: {str(e)[:160]}") from None
    cfg = dict(ck["data_config"])
    cfg["input_size"] = tuple(cfg["input_size"])
    if spec.image_size and spec.image_size != cfg["input_size"][-1]:
        cfg["input_size"] = (cfg["input_size"][0], spec.image_size, spec.image_size)
    return model, cfg


def load_finetune_stage_model(spec: BackboneSpec) -> tuple[nn.Module, dict[str, Any]]:
    """Model and data config of the fine-tune stage's backbones (``scratch`` and ``finetuned`` kinds)."""
    if spec.kind == "scratch":
        from featpipe.backbones._scratch import build_scratch, scratch_data_config

        return build_scratch(spec.arch, spec.seed), scratch_data_config(spec.image_size)
    return load_finetuned(spec)
