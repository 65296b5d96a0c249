"""Fold eval-mode BatchNorm into the convolution before it, for frozen inference.

A frozen BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution with
scaled weights and a shifted bias. Folding removes a memory pass per BatchNorm: EfficientNet-Lite0
on this project's 2-core AMX CPU ran ~1.2x faster in bf16 (~400 vs ~330 img/s) and ~1.25x in fp32,
and ~2x while the allocator still hands activation memory back to the OS. torch's own
``torch.fx.experimental.optimization.fuse`` matches exact ``nn.BatchNorm2d`` only and returns a new
``GraphModule``; timm's ``BatchNormAct2d`` (BatchNorm + activation in one module) and the module
names that layer cuts hook into need this small pass over the fx graph instead. The weight
arithmetic is torch's ``fuse_conv_bn_eval``.
"""

from __future__ import annotations

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _Tracer(fx.Tracer):
    """Keeps every BatchNorm (and timm's no-trace modules) a leaf, so its node names the module."""

    def __init__(self, leaves: tuple[type, ...]) -> None:
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)


def _bn_remainder(bn: nn.Module) -> nn.Module | None:
    """What is left of a BatchNorm module once its affine map moved into the convolution."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)  # timm's BatchNormAct2d: batch_norm, then drop, then act
    return None


def _plain_conv(m: nn.Module | None) -> bool:
    """A convolution whose output is linear in its weight: torch's, or timm's TF "same"-padding one
    (zero padding, then the same conv). Others (weight-standardised convs) recompute their weight."""
    return type(m) is nn.Conv2d or (isinstance(m, nn.Conv2d) and type(m).__name__ == "Conv2dSame")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode ``Conv2d -> BatchNorm2d`` pair of ``model`` in place; returns how many.

    A pair is folded only when the convolution's output goes to the BatchNorm alone, neither module
    carries hooks (a layer cut reads its output), and the BatchNorm tracks running statistics. A model
    fx cannot trace is left as it is (it stays correct, only not faster).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    leaves: list[type] = [nn.modules.batchnorm._BatchNorm]
    try:  # modules timm itself keeps opaque when it traces
        from timm.models._features_fx import get_notrace_modules

        leaves += list(get_notrace_modules())
    except Exception:  # an older timm: the BatchNorm leaves are enough
        pass
    try:
        graph = _Tracer(tuple(leaves)).trace(model)
    except Exception:  # dynamic control flow fx cannot follow: no folding
        return 0
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        bn, conv = modules.get(node.target), modules.get(prev.target) if prev.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not _plain_conv(conv) or len(prev.users) != 1:
            continue
        if len(node.args) != 1 or node.kwargs or not bn.track_running_stats or bn.running_var is None:
            continue
        if any(m._forward_hooks or m._forward_pre_hooks for m in (conv, bn)):
            continue
        rest = _bn_remainder(bn)
        if rest is None:
            continue
        _set_module(model, prev.target, fuse_conv_bn_eval(conv, bn))
        _set_module(model, node.target, rest)
        folded += 1
    return folded
