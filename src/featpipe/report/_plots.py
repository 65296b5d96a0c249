"""Report figures, drawn with matplotlib's Agg backend into PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update(
    {
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": False,
        "legend.fontsize": 8,
        "legend.frameon": False,
    }
)
PALETTE = [
    "#3b6ea8",
    "#e07b39",
    "#4f9d69",
    "#c44e52",
    "#8172b2",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#ccb974",
    "#64b5cd",
]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def split_counts(path: Path, classes: Sequence[str], counts: dict[str, np.ndarray]) -> Path:
    """Grouped bars: images per class for each split."""
    C = len(classes)
    splits = list(counts)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.55 * C * max(1, len(splits)) / 2), 3.2))
    x = np.arange(C)
    w = 0.8 / max(1, len(splits))
    for k, s in enumerate(splits):
        ax.bar(x + (k - (len(splits) - 1) / 2) * w, counts[s], w, label=s, color=PALETTE[k % len(PALETTE)])
    ax.set_xticks(
        x, [str(c) for c in classes], rotation=45 if C > 6 else 0, ha="right" if C > 6 else "center"
    )
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    top = max((int(np.max(v)) for v in counts.values() if len(v)), default=1)
    ax.set_ylim(0, max(1, top) * 1.25)
    ax.legend(ncol=len(splits), loc="upper right")
    return _save(fig, path)


def heatmap(
    path: Path,
    M: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    fmt: str = "d",
    cmap: str = "Blues",
    normalize_rows: bool = False,
) -> Path:
    """Labelled heatmap with the value in each cell (colour = row-normalised value if asked)."""
    M = np.asarray(M, dtype=float)
    shade = M / np.maximum(M.sum(1, keepdims=True), 1) if normalize_rows else M
    n = max(len(rows), len(cols))
    side = min(11, 1.8 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    im = ax.imshow(shade, cmap=cmap, vmin=0, vmax=max(float(np.nanmax(shade)) if shade.size else 1, 1e-9))
    ax.set_xticks(
        range(len(cols)),
        [str(c) for c in cols],
        rotation=45 if len(cols) > 3 else 0,
        ha="right" if len(cols) > 3 else "center",
    )
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n <= 25:
        hi = np.nanmax(shade) if shade.size else 1
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                v = M[i, j]
                txt = f"{int(v)}" if fmt == "d" else format(v, fmt)
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=8 if n <= 12 else 6,
                    color="white" if shade[i, j] > 0.6 * hi else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def multilabel_confusion(path: Path, cms: Sequence[Any], classes: Sequence[str]) -> Path:
    """One small labelled 2x2 confusion matrix per label."""
    C = len(classes)
    ncol = min(C, 5)
    nrow = (C + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.3 * nrow), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= C:
            ax.axis("off")
            continue
        M = np.asarray(cms[k], dtype=float)
        ax.imshow(M, cmap="Blues", vmin=0, vmax=max(M.max(), 1))
        for i in range(2):
            for j in range(2):
                ax.text(
                    j,
                    i,
                    int(M[i, j]),
                    ha="center",
                    va="center",
                    color="white" if M[i, j] > 0.6 * M.max() else "black",
                )
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_title(str(classes[k]), fontsize=9)
        if k % ncol == 0:
            ax.set_ylabel("true")
        ax.set_xlabel("predicted")
    fig.suptitle("Per-label confusion matrices (test)")
    fig.tight_layout()
    return _save(fig, path)


def _curve_series(task: str, y: np.ndarray, proba: np.ndarray, classes: Sequence[str], max_classes: int = 10):
    """(name, y_binary, score) per curve: binary -> positive class; else per class + micro average."""
    if task == "binary":
        return [(str(classes[1]), (y == 1).astype(int), proba[:, 1])]
    Y = y.astype(int) if task == "multilabel" else np.eye(len(classes), dtype=int)[y.astype(int)]
    out = [("micro-average", Y.ravel(), proba.ravel())]
    order = np.argsort(-Y.sum(0))[:max_classes]
    out += [(str(classes[c]), Y[:, c], proba[:, c]) for c in order]
    return out


def roc_pr(path: Path, task: str, y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Path | None:
    """ROC and precision-recall curves on the test rows (one-vs-rest per class for >2 classes)."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    series = [s for s in _curve_series(task, y, proba, classes) if 0 < s[1].sum() < len(s[1])]
    if not series:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    for k, (name, yb, sc) in enumerate(series):
        fpr, tpr, _ = roc_curve(yb, sc)
        prec, rec, _ = precision_recall_curve(yb, sc)
        style = (
            {"color": "black", "lw": 2} if name == "micro-average" else {"color": PALETTE[k % 10], "lw": 1.2}
        )
        a1.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})", **style)
        a2.step(rec, prec, where="post", label=name, **style)
    a1.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    a1.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC (test)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    a2.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", xlim=(0, 1), ylim=(0, 1.02))
    a1.legend(loc="lower right")
    return _save(fig, path)


def threshold_curve(
    path: Path,
    thresholds: Sequence[float],
    scores: Sequence[float | None],
    chosen: float | None,
    metric: str,
    plateau: Sequence[float] | None = None,
) -> Path:
    """Validation metric against the decision threshold, with the chosen threshold marked."""
    t = np.asarray(thresholds, dtype=float)
    s = np.asarray([np.nan if v is None else v for v in scores], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if plateau and len(plateau) == 2:
        ax.axvspan(plateau[0], plateau[1], color=PALETTE[2], alpha=0.12, label="plateau")
    ax.plot(t, s, color=PALETTE[0], lw=1.5)
    if chosen is not None:
        ax.axvline(chosen, color=PALETTE[3], ls="--", lw=1.2, label=f"chosen {chosen:.3g}")
    ax.set(
        xlabel="threshold",
        ylabel=f"val {metric}",
        title=f"Validation {metric} vs threshold",
        xlim=(0, 1),
        ylim=(0, 1.05),
    )
    ax.legend(loc="lower center")
    return _save(fig, path)


def per_class_thresholds(
    path: Path, classes: Sequence[str], thresholds: Sequence[float | None], f1: Sequence[float | None]
) -> Path:
    C = len(classes)
    x = np.arange(C)
    th = np.asarray([np.nan if v is None else v for v in thresholds], dtype=float)
    f = np.asarray([np.nan if v is None else v for v in f1], dtype=float)
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.6 * C), 3.2))
    ax.bar(x - 0.2, th, 0.4, label="threshold", color=PALETTE[0])
    ax.bar(x + 0.2, f, 0.4, label="test F1", color=PALETTE[1])
    ax.set_xticks(
        x, [str(c) for c in classes], rotation=45 if C > 5 else 0, ha="right" if C > 5 else "center"
    )
    ax.set_ylim(0, 1.05)
    ax.set_title("Per-label threshold and test F1")
    ax.legend(ncol=2)
    return _save(fig, path)


def leaderboard(
    path: Path,
    names: Sequence[str],
    val: Sequence[float | None],
    test: Sequence[float | None],
    metric: str,
    chance: float | None,
    human: float | None,
) -> Path:
    """Horizontal bars (val and test main metric) per model, with chance / human reference lines."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.38 * n))
    y = np.arange(n)
    v = np.asarray([np.nan if a is None else a for a in val], dtype=float)
    t = np.asarray([np.nan if a is None else a for a in test], dtype=float)
    ax.barh(y - 0.2, v, 0.4, label="val", color=PALETTE[0])
    ax.barh(y + 0.2, t, 0.4, label="test", color=PALETTE[1])
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    if chance is not None:
        ax.axvline(chance, color="grey", ls=":", lw=1.5, label=f"chance {chance:.3f}")
    if human is not None:
        ax.axvline(human, color=PALETTE[3], ls="--", lw=1.5, label=f"human {human:.3f}")
    hi = np.nanmax(np.concatenate([v, t, [chance or 0, human or 0]]))
    ax.set_xlim(0, max(1.0, float(hi) * 1.02) if np.isfinite(hi) else 1.0)
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} per backbone x head")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def history(path: Path, epochs: Sequence[dict[str, Any]], title: str) -> Path:
    """Loss and metric per epoch (train and val) of a fine-tune run."""
    ep = [e.get("epoch", k + 1) for k, e in enumerate(epochs)]

    def col(key: str) -> np.ndarray:
        return np.asarray([np.nan if e.get(key) is None else e.get(key) for e in epochs], dtype=float)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, kind in ((a1, "loss"), (a2, "metric")):
        for k, split in enumerate(("train", "val")):
            vals = col(f"{split}_{kind}")
            if np.isfinite(vals).any():
                ax.plot(ep, vals, marker="o", ms=3, color=PALETTE[k], label=split)
        ax.set(xlabel="epoch", ylabel=kind, title=f"{title}: {kind}")
        ax.legend()
    return _save(fig, path)
