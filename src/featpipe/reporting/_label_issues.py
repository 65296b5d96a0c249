"""Label issues by confident learning on out-of-fold probabilities of the best head on the best backbone.

Confident learning (Northcutt, Jiang, Chuang, JAIR 2021), written here from the paper (cleanlab is
AGPL): per-class thresholds t_j (the mean out-of-fold probability of class j over rows labelled j), the
confident joint C[given][likely], calibrated so that its rows sum to the label counts; its off-diagonal
mass estimates how many labels are wrong. Rows are flagged by the paper's two pruning rules together
(cleanlab's ``both``): prune by noise rate (for each off-diagonal cell, that many rows of the given class
with the largest margin p_likely - p_given) and prune by class (per class, that many rows with the
lowest self-confidence); flags are ranked by self-confidence, the probability of the given label.

The probabilities come from the head that tops the leaderboard, refitted with its chosen
hyper-parameters on K-1 folds of every labelled row (no row is scored by a model that saw it), then
temperature-scaled (one parameter, fitted on those out-of-fold rows): confident learning assumes
calibrated probabilities, and an over-confident head otherwise passes its own mistakes off as wrong
labels. A model too weak to tell the two apart judges nothing (:func:`too_weak`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ROWS = 20_000
FOLDS = 5
# A checking model must (1) remove at least half of the errors of always predicting the majority class,
# (acc - acc0) / (1 - acc0), and (2) remove MIN_GAIN_UNFLAGGED of them on the rows it does not flag
# (wrong labels lower the plain accuracy of a perfect model): below that, its confident mistakes
# outnumber the wrong labels it finds (benchmarks/label_errors.py).
MIN_GAIN = 0.5
MIN_GAIN_UNFLAGGED = 0.9
METHOD = ("confident learning (Northcutt et al. 2021) on temperature-scaled out-of-fold probabilities: "
          "per-class thresholds, calibrated confident joint, pruned by noise rate and by class, "
          "ranked by self-confidence")


@dataclass
class Probe:
    """The model whose out-of-fold probabilities judge the labels: a head kind, its chosen
    configuration and constructor settings, on one feature cache."""

    cache: Any
    head: str
    params: Any
    config: dict[str, Any] = field(default_factory=dict)
    basis: str = ""
    backbone: str = ""

    def describe(self) -> dict[str, Any]:
        return {"head": self.head, "params": self.params, "basis": self.basis, "backbone": self.backbone}


# ------------------------------------------------------------------------------------------- algorithm


def temperature_scale(labels: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, float]:
    """``proba`` with one temperature T (``softmax(log p / T)``) that minimises the log-loss of
    ``labels``; returns the scaled probabilities and T (Guo et al. 2017, post-hoc calibration)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    y = np.asarray(labels, dtype=np.int64)
    L = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-300, 1.0))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(L / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(-4.0, 6.0), method="bounded")
    t = float(np.exp(res.x))
    return np.exp(log_softmax(L / t, axis=1)), t


def confident_learning(labels: np.ndarray, proba: np.ndarray, prune: str = "both") -> dict[str, Any]:
    """Confident learning on given class indices ``labels`` (n,) and out-of-fold ``proba`` (n, K).

    Returns the per-class ``thresholds``, the ``confident_joint`` (counts, given x likely), its
    ``calibrated`` form (rows sum to the label counts), ``n_estimated`` (its off-diagonal sum: the
    estimated number of wrong labels), and per row ``flagged`` (pruned by noise rate, and also by class
    with ``prune="both"``; never a row whose most probable class is the given one), ``suggested`` (the
    most probable other class) and ``self_confidence`` (the probability of the given label).
    """
    if prune not in ("both", "noise_rate"):
        raise ValueError(f"prune must be 'both' or 'noise_rate', got {prune!r}")
    y = np.asarray(labels, dtype=np.int64)
    P = np.asarray(proba, dtype=np.float64)
    n, K = P.shape
    counts = np.bincount(y, minlength=K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        thr = np.array([P[y == j, j].mean() if counts[j] else np.inf for j in range(K)])
    above = P >= thr[None, :]
    has = above.any(1)
    likely = np.where(above, P, -np.inf).argmax(1)  # the most probable of the confidently predicted classes
    cj = np.zeros((K, K), dtype=np.int64)
    np.add.at(cj, (y[has], likely[has]), 1)
    # every given class keeps at least one row on the diagonal (a class whose rows all look like another
    # would otherwise be removed whole)
    diag = np.diag_indices(K)
    cj[diag] = np.where(counts > 0, np.maximum(cj[diag], 1), 0)
    rows = cj.sum(1, keepdims=True)
    cal = np.where(rows > 0, cj / np.maximum(rows, 1) * counts[:, None], 0.0)
    off = cal.copy()
    off[diag] = 0.0
    prune_nr = np.rint(off).astype(np.int64)
    self_conf = P[np.arange(n), y]
    by_noise_rate = np.zeros(n, dtype=bool)
    by_class = np.zeros(n, dtype=bool)
    for i in range(K):
        idx = np.flatnonzero(y == i)
        budget = max(int(counts[i]) - 1, 0)  # keep at least one row of every class
        if prune_nr[i].sum() > budget:
            prune_nr[i] = np.floor(prune_nr[i] * budget / prune_nr[i].sum()).astype(np.int64)
        for j in np.flatnonzero(prune_nr[i]):
            margin = P[idx, j] - P[idx, i]
            by_noise_rate[idx[np.argsort(-margin, kind="stable")[: prune_nr[i, j]]]] = True
        k = min(int(round(off[i].sum())), budget)
        by_class[idx[np.argsort(self_conf[idx], kind="stable")[:k]]] = True
    other = P.copy()
    other[np.arange(n), y] = -np.inf
    flagged = by_noise_rate & (by_class if prune == "both" else True)
    flagged &= P.argmax(1) != y  # a row the model assigns to its given class is never flagged
    return {
        "thresholds": thr,
        "confident_joint": cj,
        "calibrated": cal,
        "n_estimated": float(off.sum()),
        "flagged": flagged,
        "suggested": other.argmax(1),
        "self_confidence": self_conf,
    }


def too_weak(accuracy: float, unflagged: float, constant: float) -> str | None:
    """Why a model cannot judge labels (``None``: it can), from its out-of-fold ``accuracy`` on every
    row and on the rows it does not flag, against always predicting the majority class (``constant``)."""
    if constant >= 1.0:
        return "every row has the same label"
    gain = (accuracy - constant) / (1.0 - constant)
    gain_rest = (unflagged - constant) / (1.0 - constant)
    if gain < MIN_GAIN:
        return (f"its out-of-fold accuracy {accuracy:.3f} removes {max(gain, 0.0):.0%} of the errors of always "
                f"predicting the majority class ({constant:.3f}); at least {MIN_GAIN:.0%} is needed")
    if gain_rest < MIN_GAIN_UNFLAGGED:
        return (f"even on the rows it does not flag its out-of-fold accuracy is {unflagged:.3f}, removing "
                f"{max(gain_rest, 0.0):.0%} of the majority-class errors (at least {MIN_GAIN_UNFLAGGED:.0%} is "
                "needed): its confident mistakes would be listed as wrong labels")
    return None


# --------------------------------------------------------------------------------------- on a cache


def _head(probe: Probe, task: str) -> Any:
    from featpipe.heads import make_head

    cfg = {k: v for k, v in probe.config.items() if k not in ("cv", "refit", "metric", "task")}
    return make_head(probe.head, **cfg, task=task)


def find_label_issues(probe: Probe, *, folds: int = FOLDS, max_rows: int = MAX_ROWS, seed: int = 0,
                      judge: bool = True) -> dict[str, Any]:
    """Confident learning on every labelled, embedded row of ``probe.cache`` (a seeded subsample of
    ``max_rows`` when larger) with ``folds``-fold out-of-fold probabilities of ``probe``'s head.

    Returns a JSON-able record: the basis (model, out-of-fold accuracy, method), ``too_weak`` (why
    nothing is judged) or ``n_estimated`` and ``flags`` (every flagged row, lowest self-confidence
    first: ``row``, ``given``, ``suggested``, ``score``). Multilabel: each label is its own binary
    problem (present / absent), judged only where the model is strong enough on that label; a flag is
    one image with its given and suggested label sets. ``judge=False`` lists the flags of a model
    too weak to judge all the same (for benchmarks; the report never does).
    """
    c = probe.cache
    classes = [str(x) for x in c.classes]
    rows = np.flatnonzero(np.asarray(c.ok) & np.asarray(c.labeled))
    info: dict[str, Any] = {
        "method": METHOD, "probe": probe.describe(), "folds": folds, "n_labeled": int(len(rows)),
        "subsampled": False, "skipped": None, "too_weak": None, "oof_accuracy": None,
        "constant_accuracy": None, "n_estimated": None, "n_flagged": 0, "flags": [],
        "min_gain": MIN_GAIN, "min_gain_unflagged": MIN_GAIN_UNFLAGGED, "seed": seed,
    }
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
        info["subsampled"] = True
    info["n_used"] = int(len(rows))
    Y = np.asarray(c.labels)[rows]
    if len(rows) < 2 * folds:
        info["skipped"] = f"too few labelled rows ({len(rows)}) for {folds}-fold cross-validation"
        return info
    X = np.asarray(c.features[rows], dtype=np.float64)
    head = _head(probe, c.task)
    if c.task == "multilabel":
        return _multilabel(info, head, probe, X, Y.astype(np.int64), rows, classes, folds, judge)
    y = Y.astype(np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if (counts > 0).sum() < 2:
        info["skipped"] = "fewer than two classes among the labelled rows"
        return info
    P = head.cross_val_proba(X, y, probe.params, folds=folds, n_classes=len(classes))
    P, info["temperature"] = temperature_scale(y, P)
    cl = confident_learning(y, P)
    right = P.argmax(1) == y
    acc, rest = float(right.mean()), float(right[~cl["flagged"]].mean())
    const = float(counts.max() / counts.sum())
    info.update(oof_accuracy=acc, unflagged_accuracy=rest, constant_accuracy=const,
                too_weak=too_weak(acc, rest, const))
    flagged = np.flatnonzero(cl["flagged"])
    flagged = flagged[np.argsort(cl["self_confidence"][flagged], kind="stable")]
    if info["too_weak"] and judge:  # kept for benchmarks/label_errors.py; never shown nor written
        info["withheld"] = {"n_estimated": cl["n_estimated"], "rows": rows[flagged].tolist()}
        return info
    info["n_estimated"] = cl["n_estimated"]
    info["flags"] = [
        {"row": int(rows[i]), "given": classes[y[i]], "suggested": classes[cl["suggested"][i]],
         "score": float(cl["self_confidence"][i]), "p_suggested": float(P[i, cl["suggested"][i]])}
        for i in flagged
    ]
    info["n_flagged"] = len(flagged)
    return info


def _multilabel(info: dict[str, Any], head: Any, probe: Probe, X: np.ndarray, Y: np.ndarray, rows: np.ndarray,
                classes: list[str], folds: int, judge: bool) -> dict[str, Any]:
    P = head.cross_val_proba(X, Y, probe.params, folds=folds)
    per_label = []
    flags: dict[int, list[tuple[int, float]]] = {}
    estimated = 0.0
    accs = []
    for k, name in enumerate(classes):
        p, yk = P[:, k], Y[:, k]
        rec: dict[str, Any] = {"label": name, "oof_accuracy": None, "too_weak": None, "n_estimated": None,
                               "n_flagged": 0}
        per_label.append(rec)
        if np.isnan(p).any():
            rec["too_weak"] = f"not fitted, or fewer than {folds} positives or negatives"
            continue
        Pk, rec["temperature"] = temperature_scale(yk, np.stack([1 - p, p], 1))
        cl = confident_learning(yk, Pk)
        right = Pk.argmax(1) == yk
        acc = float(right.mean())
        const = float(max(yk.mean(), 1 - yk.mean()))
        rec["oof_accuracy"] = acc
        accs.append(acc)
        rec["too_weak"] = too_weak(acc, float(right[~cl["flagged"]].mean()), const)
        if rec["too_weak"] and judge:
            continue
        rec["n_estimated"] = cl["n_estimated"]
        estimated += cl["n_estimated"]
        for i in np.flatnonzero(cl["flagged"]):
            flags.setdefault(int(i), []).append((k, float(cl["self_confidence"][i])))
        rec["n_flagged"] = int(cl["flagged"].sum())
    info["per_label"] = per_label
    info["oof_accuracy"] = float(np.mean(accs)) if accs else None
    judged = [r for r in per_label if r["n_estimated"] is not None]
    if not judged:
        info["too_weak"] = "no label has a model strong enough to judge it (" + "; ".join(
            f"{r['label']}: {r['too_weak']}" for r in per_label[:3]) + ")"
        return info
    info["n_estimated"] = estimated
    out = []
    for i, ks in flags.items():
        given = Y[i].astype(bool)
        suggested = given.copy()
        for k, _ in ks:
            suggested[k] = not suggested[k]
        out.append({"row": int(rows[i]), "given": ";".join(np.asarray(classes)[given]),
                    "suggested": ";".join(np.asarray(classes)[suggested]),
                    "score": min(s for _, s in ks), "labels": [classes[k] for k, _ in ks]})
    info["flags"] = sorted(out, key=lambda d: d["score"])
    info["n_flagged"] = len(out)
    return info


# ------------------------------------------------------------------------------------ choosing the model


def _params_text(params: Any) -> str:
    if isinstance(params, list):
        return "per label"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items())


def probe_from_run(metrics: dict[str, Any], cache: Any, backbone: str, rank: int = 1) -> Probe | None:
    """The head of a fit-head run (its ``metrics.json``), rebuilt with its chosen hyper-parameters and
    recorded settings, on ``cache``; ``None`` when the run is not an in-memory feature head (a fine-tune
    run, or an out-of-core head, whose configuration belongs to its streaming variant)."""
    from featpipe.heads import HEADS

    head, params = str(metrics.get("head")), metrics.get("params")
    if head not in HEADS or not isinstance(params, dict) or metrics.get("out_of_core"):
        return None
    if cache.task == "multilabel":
        params = [params.get(str(c)) for c in cache.classes]
    cw = metrics.get("class_weight")
    config = {**(metrics.get("head_params") or {}), "preprocess": metrics.get("preprocess") or "standardize",
              "class_weight": None if cw in (None, "none") else cw, "seed": int(metrics.get("seed") or 0)}
    note = "" if "head_params" in metrics else "; its other settings are the defaults (not recorded by the run)"
    return Probe(cache, head, params, config, backbone=backbone,
                 basis=f"the {head} head of the {'best run' if rank == 1 else f'run ranked {rank}'} on the "
                       f"leaderboard (by validation), refitted on "
                       f"{FOLDS} folds with its chosen hyper-parameters ({_params_text(params)}){note}")


def default_probe(caches: list[Any], labels: dict[str, str]) -> Probe | None:
    """Without fitted heads: the logistic head, its C chosen on each cache's validation split (5-fold
    CV on train when there is none), on the cache where it scores best (``labels`` names each cache's
    backbone by path)."""
    from featpipe.errors import HeadError
    from featpipe.heads import LogisticHead

    best: tuple[float, Probe] | None = None
    for c in caches:
        tr, va = c.split_indices("train"), c.split_indices("val")
        cv = None
        if len(va) == 0:  # with cv the two parts are pooled: C is chosen by 5-fold CV over train
            tr, va, cv = tr[0::2], tr[1::2], FOLDS
        if len(tr) == 0 or len(va) == 0:
            continue
        X = np.asarray(c.features, dtype=np.float64)
        Y = np.asarray(c.labels)
        head = LogisticHead(task=c.task, seed=c.seed, cv=cv)
        kw = {} if c.task == "multilabel" else {"n_classes": len(c.classes)}
        try:
            head.fit(X[tr], Y[tr], X[va], Y[va], **kw)
        except HeadError:
            continue
        s = head.best_val_score_
        score = float(np.mean(list(s.values()))) if isinstance(s, dict) else float(s)
        params = ([head.params_.get(k) for k in range(len(c.classes))] if c.task == "multilabel"
                  else dict(head.params_))
        p = Probe(c, "logistic", params, {"seed": c.seed}, backbone=labels.get(str(c.path), ""),
                  basis=f"no fitted heads given: the logistic head with its C chosen "
                        f"{'by 5-fold CV on train' if cv else 'on the validation split'} ({_params_text(params)}), "
                        "on the backbone where it scores best")
        if best is None or score > best[0]:
            best = (score, p)
    return best[1] if best else None
