"""Pieces every report section uses: formatting, the plot store, labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from featpipe.reporting import _analysis

PLOT_STYLE = "s2"  # bump when figures change: cached PNGs are then redrawn
GALLERY = 12  # images per gallery (at most 24)
THUMBS_PER_CLASS = 8
SECONDARY = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "bal. acc"),
    ("f1_macro", "macro F1"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "AP / mAP"),
)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _analysis.finite(x)
    return "–" if v is None else f"{v:.{digits}f}"


class _Plots:
    """PNG files in ``out/plots``: drawn only when missing (names carry an input fingerprint)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "plots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.used: set[str] = set()
        self.drawn = 0

    def get(self, name: str, draw: Callable[[Path], Any]) -> str | None:
        path = self.dir / f"{name}-{PLOT_STYLE}.png"
        if not path.exists():
            tmp = self.dir / f".{name}.tmp.png"
            if draw(tmp) is None:
                tmp.unlink(missing_ok=True)
                return None
            tmp.replace(path)
            self.drawn += 1
        self.used.add(path.name)
        return f"plots/{path.name}"

    def prune(self) -> None:
        for p in self.dir.glob("*.png"):
            if p.name not in self.used:
                p.unlink(missing_ok=True)


def _backbone_label(spec: dict[str, Any], run: str = "") -> str:
    parts = run.split("__")
    if len(parts) >= 3:
        return parts[1]
    name = str(spec.get("name", "?"))
    extra = [str(spec[k]) for k in ("weights",) if spec.get(k) and spec.get(k) != "imagenet"]
    if spec.get("image_size"):
        extra.append(f"{spec['image_size']}px")
    return name + (f" ({', '.join(extra)})" if extra else "")


def _dataset_key(info: dict[str, Any]) -> str:
    return f"{info.get('name')}\0{info.get('source')}"
