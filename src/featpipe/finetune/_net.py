"""The network that is trained: a backbone module + dropout + one linear classifier layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from featpipe.backbones import BackboneNet
from featpipe.errors import FinetuneError


class ClassifierNet(nn.Module):
    """``fc(dropout(backbone(x)))``: logits for every class (binary: 2 columns, multilabel: one per label)."""

    def __init__(self, backbone: BackboneNet, feature_dim: int, n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))


def trainable_prefixes(backbone: BackboneNet, unfreeze: str) -> list[str]:
    """Module names (inside ``backbone.model``) whose parameters train under ``--unfreeze``."""
    stages = backbone.stages()
    if unfreeze == "head":
        return []
    if unfreeze == "all":
        return [m for _, mods in stages for m in mods]
    n = int(unfreeze.split("-", 1)[1])
    if not 1 <= n <= len(stages):
        raise FinetuneError(f"--unfreeze {unfreeze}: the backbone has {len(stages)} stages "
                            f"(featpipe backbones --stages NAME lists them)")
    return [m for _, mods in stages[-n:] for m in mods]


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(net: ClassifierNet, prefixes: list[str]) -> None:
    """Only the classifier layer and the backbone modules under ``prefixes`` get gradients."""
    for name, p in net.backbone.model.named_parameters():
        p.requires_grad_(_under(name, prefixes))
    for p in net.fc.parameters():
        p.requires_grad_(True)


def set_train_mode(net: ClassifierNet, prefixes: list[str], bn: str = "train") -> None:
    """Train mode for the trained parts; frozen parts stay in eval mode (their BatchNorm statistics
    and any dropout inside them stay as they were). ``bn="frozen"``: every norm layer keeps its running
    statistics (its affine parameters still train where unfrozen)."""
    net.train()
    for name, m in net.backbone.model.named_modules():
        if name and not _under(name, prefixes) and not any(p.startswith(name + ".") for p in prefixes):
            m.eval()
        elif bn == "frozen" and isinstance(m, nn.modules.batchnorm._NormBase):
            m.eval()
    if not prefixes:
        net.backbone.eval()


def param_groups(net: ClassifierNet, lr: float, backbone_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Discriminative learning rates (head ``lr``, backbone ``backbone_lr``); no weight decay on
    biases and norm layers (1-d parameters)."""
    groups = []
    for part, part_lr in ((net.backbone, backbone_lr), (net.fc, lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        rest = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, weight_decay), (rest, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": part_lr, "weight_decay": wd})
    return groups


def init_from_linear_probe(fc: nn.Linear, head: Any, task: str) -> None:
    """Set ``fc`` to a fitted featpipe logistic head (its standardisation folded into the weights),
    so fine-tuning starts from the tuned linear solution (LP-FT)."""
    from featpipe.heads import ConstantProba

    C, D = fc.weight.shape
    W, b = np.zeros((C, D)), np.zeros(C)
    if task == "multilabel":
        for k, est in enumerate(head.estimators_):
            if isinstance(est, ConstantProba):
                p = min(max(est.p, 1e-4), 1 - 1e-4)
                b[k] = np.log(p / (1 - p))
            else:
                W[k], b[k] = est.coef_[0], est.intercept_[0]
    else:
        lr, present = head.model_, np.asarray(head.present_)
        b[:] = -10.0  # classes never seen in train: never predicted, as by the probe
        if lr.coef_.shape[0] == 1:  # two classes: p(second) = sigmoid(w.x + b)
            W[present[1]], b[present[0]], b[present[1]] = lr.coef_[0], 0.0, lr.intercept_[0]
        else:
            W[present], b[present] = lr.coef_, lr.intercept_
    pre = head.preprocessor_
    if getattr(pre, "pca_", None) is not None or pre.kind not in ("standardize", "none"):
        raise FinetuneError("the linear probe must use standardize or no feature preprocessing")
    if pre.kind == "standardize":
        W = W / pre.scale_
        b = b - W @ pre.mean_
    with torch.no_grad():
        fc.weight.copy_(torch.as_tensor(W, dtype=fc.weight.dtype))
        fc.bias.copy_(torch.as_tensor(b, dtype=fc.bias.dtype))
