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


def reliability(path: Path, series: Sequence[tuple[str, dict[str, Any]]]) -> Path | None:
    """Reliability diagram (observed frequency against mean predicted probability per bin, one line per
    model, ECE in the legend) beside the number of test predictions per bin."""
    series = [(n, c) for n, c in series if c and c.get("bins")]
    if not series:
        return None
    kind = series[0][1]["kind"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.9), gridspec_kw={"width_ratios": [1.25, 1]})
    a1.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfectly calibrated")
    for k, (name, cal) in enumerate(series):
        b = cal["bins"]
        color = PALETTE[k % len(PALETTE)]
        n = np.array([x["count"] for x in b], dtype=float)
        a1.plot([x["confidence"] for x in b], [x["frequency"] for x in b], lw=1.2, color=color, alpha=0.8,
                label=f"{name} (ECE {cal['ece']:.3f})")
        # marker area grows with the bin's predictions: a bin of two is not a trend
        a1.scatter([x["confidence"] for x in b], [x["frequency"] for x in b], s=6 + 60 * np.sqrt(n / n.max()),
                   color=color, alpha=0.85, zorder=3, edgecolors="white", linewidths=0.5)
        a2.plot([(x["lo"] + x["hi"]) / 2 for x in b], [x["count"] for x in b], marker="o", ms=3, lw=1.2,
                color=color)
    what = "fraction correct" if kind == "top-label confidence" else "fraction positive"
    a1.set(xlabel=f"mean predicted probability ({kind})", ylabel=f"observed {what}", xlim=(0, 1), ylim=(0, 1.02),
           title="Reliability (test)")
    a1.legend(loc="upper left", fontsize=7)
    a1.text(0.99, 0.02, "marker area ~ predictions in the bin", transform=a1.transAxes, ha="right", fontsize=7,
            color="grey")
    a2.set(xlabel=f"predicted probability ({kind})", ylabel="test predictions per bin", xlim=(0, 1),
           title="How many predictions fall in each bin")
    counts = [x["count"] for _, c in series for x in c["bins"]]
    if max(counts) > 50 * min(counts):
        a2.set_yscale("log")
    return _save(fig, path)


DERIVED_PARAMS = ("epochs", "n_estimators")  # found by early stopping, not searched


def _short(params: dict[str, Any], keys: Sequence[str]) -> str:
    def f(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return "\n".join(f"{k}={f(params.get(k))}" for k in keys)


def search_curve(path: Path, search: Sequence[dict[str, Any]], metric: str, classes: Sequence[str],
                 scored_on: str = "val") -> Path | None:
    """Validation score of every configuration the head's search tried (one line per label for one-vs-rest
    heads), with the chosen one starred; a single searched number becomes the x axis (log if it spans
    decades), otherwise configurations are placed in the order tried."""
    recs = [s for s in search if isinstance(s, dict) and isinstance(s.get("params"), dict)]
    if len(recs) < 2:
        return None
    keys = sorted({k for s in recs for k in s["params"]})
    varying = [k for k in keys if k not in DERIVED_PARAMS
               and len({repr(s["params"].get(k)) for s in recs}) > 1]
    numeric = len(varying) == 1 and all(
        isinstance(s["params"].get(varying[0]), (int, float)) and not isinstance(s["params"].get(varying[0]), bool)
        for s in recs)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for s in recs:
        groups.setdefault(s.get("label"), []).append(s)
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    labels_all: list[str] = []
    for g, (label, rs) in enumerate(groups.items()):
        color = PALETTE[g % len(PALETTE)]
        name = None if label is None else (str(classes[label]) if isinstance(label, int) and label < len(classes)
                                           else str(label))
        score = np.array([np.nan if s.get("val_score") is None else s["val_score"] for s in rs], dtype=float)
        nll = np.array([np.inf if s.get("val_log_loss") is None else s["val_log_loss"] for s in rs], dtype=float)
        best = max(range(len(rs)), key=lambda i: (np.nan_to_num(score[i], nan=-np.inf), -nll[i], -i))
        if numeric:
            x = np.array([float(s["params"][varying[0]]) for s in rs])
        else:
            if not labels_all:
                labels_all = [_short(s["params"], varying or keys) for s in rs]
            x = np.arange(1, len(rs) + 1, dtype=float)
        o = np.argsort(x, kind="stable")
        ax.plot(x[o], score[o], marker="o", ms=3.5, lw=1.3, color=color, label=name)
        ax.plot([x[best]], [score[best]], marker="*", ms=12, color=color, mec="black", mew=0.6, ls="none",
                label="chosen" if g == 0 else None)
    if numeric:
        xs = np.array([float(s["params"][varying[0]]) for s in recs])
        if (xs > 0).all() and xs.max() / xs.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(varying[0])
    else:
        ax.set_xlabel("configuration, in the order tried")
        n = len(labels_all)
        ax.set_xticks(range(1, n + 1), labels_all if n <= 6 else [str(i) for i in range(1, n + 1)],
                      fontsize=7 if n <= 6 else 8)
    ax.set_ylabel(f"{scored_on} {metric}")
    ax.set_title("Hyper-parameter search")
    if len(groups) <= 10:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return _save(fig, path)
