"""Export a model bundle: self-contained joblib, skops (restricted loading) or one ONNX graph.

Trust model: a joblib bundle is a pickle, and unpickling runs code, so load joblib bundles only from
sources you trust (the ``.sha256`` sidecar detects changes, not malice). A ``.skops`` file is loaded
by skops, which refuses any type not on featpipe's allow-list. An ``.onnx`` file holds no code at all:
backbone + head + thresholds as one graph that onnxruntime runs on preprocessed image tensors.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.bundle.io import load_model, save_skops
from featpipe.checksum import write_sidecar
from featpipe.errors import ModelError, import_optional
from featpipe.folders import writable_folder
from featpipe.heads.model import FeaturepipeModel

EXPORT_FORMATS = ("joblib", "skops", "onnx")
# format -> (module it needs, the extra that installs it, what the user asked for)
_FORMAT_PACKAGES = {"skops": ("skops.io", "export", "skops export (--format skops)"),
                    "onnx": ("onnx", "onnx", "ONNX export (--format onnx)")}

# ------------------------------------------------------------------------------------------- ONNX


def _head_module(model: FeaturepipeModel) -> Any:
    """The fitted head as torch ops: preprocessing, then logistic or MLP layers, probabilities out."""
    import torch
    from torch import nn

    from featpipe.heads import ConstantProba, LogisticHead, MLPHead, MLPWeights

    head = model.head_
    if not isinstance(head, (LogisticHead, MLPHead)):
        raise ModelError(f"ONNX export supports logistic and mlp heads; a {head.name} head is refused "
                         "(tree ensembles have no torch form here; serve it with joblib or skops)")
    pre = head.preprocessor_
    if getattr(pre, "pca_", None) is not None:
        raise ModelError("ONNX export does not support heads with a PCA step")
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731

    def estimator_layers(est: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias, one-logit?) per layer, the last flag fixed here so the trace has no shape test."""
        pairs = est.layers if isinstance(est, MLPWeights) else [(est.coef_, est.intercept_)]
        return [(t(W), t(b), np.asarray(W).shape[0] == 1) for W, b in pairs]

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kind = pre.kind
            self.register_buffer("mean", t(getattr(pre, "mean_", 0.0)))
            self.register_buffer("scale", t(getattr(pre, "scale_", 1.0)))
            if model.task_ == "multilabel":
                self.parts = [None if isinstance(e, ConstantProba) else estimator_layers(e) for e in head.estimators_]
                self.consts = [float(e.p) if isinstance(e, ConstantProba) else 0.0 for e in head.estimators_]
            else:
                self.layers = estimator_layers(head.model_)
                expand = np.zeros((len(head.present_), len(model.classes_)), dtype=np.float32)
                expand[np.arange(len(head.present_)), head.present_] = 1.0
                self.register_buffer("expand", torch.as_tensor(expand))

        @staticmethod
        def run(layers: list, x: torch.Tensor) -> torch.Tensor:
            for i, (W, b, _) in enumerate(layers):
                x = x @ W.T + b
                if i < len(layers) - 1:
                    x = torch.relu(x)
            return x

        def proba(self, layers: list, x: torch.Tensor) -> torch.Tensor:
            z = self.run(layers, x)
            if layers[-1][2]:  # binary logistic regression: one logit
                p = torch.sigmoid(z)
                return torch.cat([1 - p, p], dim=1)
            return torch.softmax(z, dim=1)

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            if self.kind == "standardize":
                f = (f - self.mean) / self.scale
            elif self.kind == "l2":
                n = torch.linalg.vector_norm(f, dim=1, keepdim=True)
                f = f / torch.where(n > 1e-12, n, torch.ones_like(n))
            if model.task_ == "multilabel":
                cols = [torch.full_like(f[:, :1], c) if part is None else self.proba(part, f)[:, 1:2]
                        for part, c in zip(self.parts, self.consts, strict=True)]
                return torch.cat(cols, dim=1)
            return self.proba(self.layers, f) @ self.expand

    return Head()


def export_onnx(model: FeaturepipeModel, path: str | Path, opset: int = 17) -> Path:
    """Write backbone + head + thresholds as one ONNX graph: ``image`` (N, 3, H, W) float32, preprocessed
    as the metadata's ``preprocessing`` says -> ``probabilities`` (N, C) and ``labels`` (class indices, or a
    0/1 matrix for multilabel, with the tuned thresholds)."""
    onnx = import_optional(*_FORMAT_PACKAGES["onnx"])  # before the slow export
    import torch
    from torch import nn

    from featpipe.backbones import TorchBackbone, load_backbone, pool_features

    model._check_fitted()
    if not model.backbone_spec:
        raise ModelError("this model has no recorded backbone: nothing to export to ONNX")
    spec = model.resolved_backbone_spec()
    if spec.get("kind") != "timm":
        raise ModelError("ONNX export needs a torch backbone; this model's backbone is already an ONNX file "
                         "(run it, then the head, or export the head with joblib/skops)")
    if spec.get("layer"):
        raise ModelError("ONNX export of a --layer cut is not supported; use a whole-backbone model")
    backbone = load_backbone(spec, "cpu", preprocessing=getattr(model, "preprocessing_", None))
    assert isinstance(backbone, TorchBackbone)
    head = _head_module(model)
    task, thr = model.task_, model.thresholds_

    class Full(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = backbone.model.to(memory_format=torch.contiguous_format)
            self.head = head
            self.register_buffer("thr", torch.as_tensor(np.atleast_1d(thr if thr is not None else 0.5),
                                                        dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            p = self.head(pool_features(self.net(x)))
            if task == "multilabel":
                labels = (p >= self.thr).to(torch.int64)
            elif task == "binary":
                labels = (p[:, 1] >= self.thr[0]).to(torch.int64)
            else:
                labels = torch.argmax(p, dim=1)
            return p, labels

    full = Full().eval()
    size = backbone.preprocessing["input_size"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter handles timm CNNs best
        torch.onnx.export(full, torch.zeros(1, *size), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["probabilities", "labels"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}, "labels": {0: "batch"}})
    proto = onnx.load(str(path))
    meta = {
        "featpipe_classes": json.dumps([str(c) for c in model.classes_]),
        "featpipe_task": task,
        "featpipe_thresholds": json.dumps(None if thr is None else np.atleast_1d(thr).tolist()),
        "featpipe_preprocessing": json.dumps(backbone.preprocessing),
        "featpipe_input": "image: float32 (N, 3, H, W): resize + centre crop + scale to 0..1 + normalize with "
                          "mean/std, channels in channel_order, as featpipe_preprocessing gives them",
        "featpipe_backbone": json.dumps({k: spec.get(k) for k in ("name", "arch", "weights", "weights_id",
                                                                  "precision")}),
        "featpipe_precision_note": "the graph computes in float32 whatever precision the bundle embedded with",
        "featpipe_versions": json.dumps(model.versions_),
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    write_sidecar(path)
    return path


# --------------------------------------------------------------------------------------- bundles


def copy_weights(model: FeaturepipeModel, out_dir: str | Path) -> Path | None:
    """Copy the backbone's weights file (found by hash on this machine) into ``out_dir/weights/``."""
    if not model.backbone_spec:
        return None
    spec = model.resolved_backbone_spec()
    src = spec.get("arch") if spec.get("kind") == "onnx" else spec.get("weights_path")
    if not src or spec.get("weights") not in ("file", "package", "onnx", "finetuned"):
        return None
    dst = Path(out_dir) / "weights" / Path(src).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def export_model(model_path: str | Path, out_dir: str | Path, fmt: str = "joblib", *, self_contained: bool = False,
                 verify: bool = True) -> list[Path]:
    """Export the bundle at ``model_path`` into ``out_dir`` as ``model.<fmt>`` (+ ``.sha256``); with
    ``self_contained`` the backbone's weights file is copied to ``out_dir/weights/``. Returns what was written."""
    if fmt not in EXPORT_FORMATS:
        raise ModelError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if fmt in _FORMAT_PACKAGES:  # before anything is written
        import_optional(*_FORMAT_PACKAGES[fmt])
    model = load_model(model_path, verify=verify)
    out = writable_folder(out_dir, "export")
    written: list[Path] = []
    if fmt == "onnx":
        written.append(export_onnx(model, out / "model.onnx"))
        return written  # the weights are inside the graph
    if self_contained:
        w = copy_weights(model, out)
        if w is not None:
            written.append(w)
    written.append(model.save(out / "model.joblib") if fmt == "joblib" else save_skops(model, out / "model.skops"))
    return written
