"""Label issues by confident learning on out-of-fold probabilities of the best head on each backbone.

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

When the study embedded the dataset with several backbones, the best head on each of the best
``MAX_PROBES`` backbones checks the labels, and a row is flagged only when every one of them flags it:
a consensus filter (Brodley and Friedl, JAIR 1999). A wrong label misleads every check, while checks
on different features seldom share a confident mistake, so the consensus keeps most of the wrong
labels and drops most of the checks' own mistakes; each check alone overestimates the count by its
confident mistakes (on cifar10-small with 300 of 6,000 labels flipped, three frozen EfficientNet-Lite
checks at 0.72-0.74 out-of-fold accuracy would each flag 677-776 images; together 372, precision 0.57
and recall 0.71; with a cross-fitted fine-tune as a fourth check, 274 at 0.72 and 0.65:
benchmarks/label_errors.py). A cross-fitted fine-tune (``finetune --cross-fit K``) checks with its own
out-of-fold probabilities.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ROWS = 20_000
MAX_PROBES = 3  # checks in the consensus: the best head on each of the best backbones
FOLDS = 5
# A checking model must (1) remove at least half of the errors of always predicting the majority class,
# (acc - acc0) / (1 - acc0), and (2) remove MIN_GAIN_UNFLAGGED of them on the rows it does not flag
# (wrong labels lower the plain accuracy of a perfect model): below that, its confident mistakes
# outnumber the wrong labels it finds (benchmarks/label_errors.py). In a consensus of several checks
# each needs (1) only: their shared confident mistakes are what remains.
MIN_GAIN = 0.5
MIN_GAIN_UNFLAGGED = 0.9
METHOD = ("confident learning (Northcutt et al. 2021) on temperature-scaled out-of-fold probabilities: "
          "per-class thresholds, calibrated confident joint, pruned by noise rate and by class, "
          "ranked by self-confidence; with several backbones, only the rows that every check flags")


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
    oof: Any = None  # a cross-fit (reporting._data.CrossFit): out-of-fold probabilities given, no cache

    def describe(self) -> dict[str, Any]:
        name = self.backbone if self.oof is not None else f"{self.head} head on {self.backbone or 'the features'}"
        return {"head": self.head, "params": self.params, "basis": self.basis, "backbone": self.backbone,
                "name": name}


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


def _gain(accuracy: float, constant: float) -> float:
    """The share of the majority-class predictor's errors that a model removes."""
    return (accuracy - constant) / (1.0 - constant)


def too_weak(accuracy: float, unflagged: float, constant: float) -> str | None:
    """Why a model cannot judge labels alone (``None``: it can), from its out-of-fold ``accuracy`` on
    every row and on the rows it does not flag, against always predicting the majority class (``constant``)."""
    if constant >= 1.0:
        return "every row has the same label"
    gain, gain_rest = _gain(accuracy, constant), _gain(unflagged, constant)
    if gain < MIN_GAIN:
        return (f"its out-of-fold accuracy {accuracy:.3f} removes {max(gain, 0.0):.0%} of the errors of always "
                f"predicting the majority class ({constant:.3f}); at least {MIN_GAIN:.0%} is needed")
    if gain_rest < MIN_GAIN_UNFLAGGED:
        return (f"even on the rows it does not flag its out-of-fold accuracy is {unflagged:.3f}, removing "
                f"{max(gain_rest, 0.0):.0%} of the majority-class errors (at least {MIN_GAIN_UNFLAGGED:.0%} is "
                "needed): its confident mistakes would be listed as wrong labels")
    return None


def _judge(labels: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """One check's verdict on one problem (the classes, or one label as present / absent): temperature
    scaling, confident learning, and whether the model is strong enough to judge alone (``too_weak``) or
    as one of several (``usable``: at least MIN_GAIN of the majority-class errors removed)."""
    P, t = temperature_scale(labels, proba)
    cl = confident_learning(labels, P)
    right = P.argmax(1) == labels
    acc, rest = float(right.mean()), float(right[~cl["flagged"]].mean()) if (~cl["flagged"]).any() else 0.0
    const = float(np.bincount(labels).max() / len(labels))
    return {**cl, "proba": P, "temperature": t, "accuracy": acc, "unflagged_accuracy": rest, "constant": const,
            "too_weak": too_weak(acc, rest, const), "usable": const < 1.0 and _gain(acc, const) >= MIN_GAIN}


def _combine(judged: list[dict[str, Any]]) -> dict[str, Any]:
    """Several checks' verdicts on one problem, as one: with two or more usable checks a row is flagged
    only when every one of them flags it (a consensus filter, Brodley & Friedl 1999: checks on different
    features seldom share a confident mistake, while a wrong label misleads them all); with one, its own
    verdict. Returns ``too_weak``, ``flagged``, ``n_estimated``, ``suggested``, ``self_confidence`` and
    ``p_suggested`` (averaged over the checks used) and ``used`` (their indices)."""
    usable = [i for i, j in enumerate(judged) if j["usable"]]
    if len(usable) < 2:
        i = usable[0] if usable else 0
        j = judged[i]
        return {"too_weak": j["too_weak"], "flagged": j["flagged"], "n_estimated": j["n_estimated"],
                "suggested": j["suggested"], "self_confidence": j["self_confidence"],
                "p_suggested": j["proba"][np.arange(len(j["suggested"])), j["suggested"]], "used": [i]}
    flagged = np.logical_and.reduce([judged[i]["flagged"] for i in usable])
    P = np.mean([judged[i]["proba"] for i in usable], axis=0)
    n = len(P)
    self_conf = np.mean([judged[i]["self_confidence"] for i in usable], axis=0)
    other = P.copy()
    given = np.asarray(judged[usable[0]]["given"])
    other[np.arange(n), given] = -np.inf
    suggested = other.argmax(1)
    return {"too_weak": None, "flagged": flagged, "n_estimated": float(flagged.sum()), "suggested": suggested,
            "self_confidence": self_conf, "p_suggested": P[np.arange(n), suggested], "used": usable}


def _check_summary(probe: Probe, judged: dict[str, Any] | None, used: bool) -> dict[str, Any]:
    out = {**probe.describe(), "used": used}
    if judged is not None:
        out.update(oof_accuracy=judged["accuracy"], n_flagged=int(judged["flagged"].sum()),
                   n_estimated=judged["n_estimated"], too_weak=judged["too_weak"], usable=bool(judged["usable"]))
    return out


# --------------------------------------------------------------------------------------- on caches


def _head(probe: Probe, task: str) -> Any:
    from featpipe.heads import make_head

    cfg = {k: v for k, v in probe.config.items() if k not in ("cv", "refit", "metric", "task")}
    return make_head(probe.head, **cfg, task=task)


def _labelled(p: Probe, z: dict[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(paths, labels, usable rows) of a check: its cache's labelled, embedded rows, or the images its
    cross-fit (arrays ``z``) scored."""
    if z is not None:
        return (np.asarray(z["paths"]).astype(str), np.asarray(z["labels"]),
                np.flatnonzero(np.asarray(z["labeled"], dtype=bool) & ~np.isnan(z["proba"]).any(1)))
    c = p.cache
    return (np.asarray(c.paths).astype(str), np.asarray(c.labels),
            np.flatnonzero(np.asarray(c.ok) & np.asarray(c.labeled)))


def _aligned(probes: list[Probe]) -> tuple[list[Probe], list[np.ndarray], list[np.ndarray | None], list[str]]:
    """The checks of the first one's dataset (same classes and task; the same label on every shared
    image; at least 90% of the first one's images embedded or scored), for each the rows of the images
    labelled and embedded (scored) in all of them, in the first cache's order, and a cross-fit's
    probabilities (``None`` for a cache's check); and why the others take no part."""
    base = probes[0].cache
    dropped: list[str] = []
    paths_b, labels_b, rows0 = _labelled(probes[0], None)
    paths0 = paths_b[rows0]
    keep, index, labels, given = [probes[0]], [None], [labels_b], [None]
    for p in probes[1:]:
        if p.oof is None and (p.cache.task != base.task
                              or [str(x) for x in p.cache.classes] != [str(x) for x in base.classes]):
            dropped.append(f"{p.describe()['name']}: other classes")
            continue
        z = None
        if p.oof is not None:
            try:
                z = p.oof.load()
                z["proba"] = np.asarray(z["proba"], dtype=np.float64)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                dropped.append(f"{p.describe()['name']}: unreadable ({type(e).__name__})")
                continue
        paths, lab, usable = _labelled(p, z)
        if np.isin(paths0, paths[usable]).mean() < 0.9:  # a check of a subset would shrink every check
            dropped.append(f"{p.describe()['name']}: covers under 90% of the images")
            continue
        keep.append(p)
        index.append(dict(zip(paths[usable].tolist(), usable.tolist(), strict=True)))
        labels.append(lab)
        given.append(None if z is None else z["proba"])
    shared = np.array([all(path in ix for ix in index[1:]) for path in paths0], dtype=bool)
    rows = [rows0[shared]]
    for ix in index[1:]:
        rows.append(np.array([ix[path] for path in paths0[shared]], dtype=np.int64))
    base_y = labels_b[rows[0]]
    same = [i for i in range(len(keep)) if np.array_equal(np.asarray(labels[i])[rows[i]], base_y)]
    dropped += [f"{keep[i].describe()['name']}: other labels" for i in range(len(keep)) if i not in same]
    return [keep[i] for i in same], [rows[i] for i in same], [given[i] for i in same], dropped


def find_label_issues(probes: Probe | list[Probe], *, folds: int = FOLDS, max_rows: int = MAX_ROWS, seed: int = 0,
                      judge: bool = True) -> dict[str, Any]:
    """Confident learning on every labelled, embedded row (a seeded subsample of ``max_rows`` when larger)
    with ``folds``-fold out-of-fold probabilities of each check's head on its cache.

    ``probes``: one check, or several on caches of the same dataset (different backbones; the first is
    the best). With two or more strong enough to count (``_judge``'s ``usable``), a row is flagged only
    when all of them flag it; each check's own figures are in ``checks``.

    Returns a JSON-able record: the basis (models, out-of-fold accuracy of the first, method),
    ``too_weak`` (why nothing is judged) or ``n_estimated`` and ``flags`` (every flagged row of the first
    check's cache, lowest self-confidence first: ``row``, ``given``, ``suggested``, ``score``).
    Multilabel: each label is its own binary problem (present / absent), judged only where the checks are
    strong enough on that label; a flag is one image with its given and suggested label sets.
    ``judge=False`` lists the flags of a model too weak to judge all the same (for benchmarks; the report
    never does).
    """
    probes = [probes] if isinstance(probes, Probe) else list(probes)
    probes, rows_each, given, dropped = _aligned(probes)
    probe, c = probes[0], probes[0].cache
    classes = [str(x) for x in c.classes]
    info: dict[str, Any] = {
        "method": METHOD, "probe": probe.describe(), "folds": folds, "n_labeled": int(len(rows_each[0])),
        "subsampled": False, "skipped": None, "too_weak": None, "oof_accuracy": None,
        "constant_accuracy": None, "n_estimated": None, "n_flagged": 0, "flags": [],
        "min_gain": MIN_GAIN, "min_gain_unflagged": MIN_GAIN_UNFLAGGED, "seed": seed,
        "checks": [probe.describe() for probe in probes], "consensus": 1, "not_used": dropped,
    }
    if len(rows_each[0]) > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows_each[0]), max_rows, replace=False))
        rows_each = [r[pick] for r in rows_each]
        info["subsampled"] = True
    rows = rows_each[0]
    info["n_used"] = int(len(rows))
    Y = np.asarray(c.labels)[rows]
    if len(rows) < 2 * folds:
        info["skipped"] = f"too few labelled rows ({len(rows)}) for {folds}-fold cross-validation"
        return info

    def oof(i: int, **kw: Any) -> np.ndarray:
        p = probes[i]
        if given[i] is not None:  # a cross-fit's own out-of-fold probabilities
            return given[i][rows_each[i]]
        X = np.asarray(p.cache.features[rows_each[i]], dtype=np.float64)
        return _head(p, c.task).cross_val_proba(X, Y.astype(np.int64), p.params, folds=folds, **kw)

    if c.task == "multilabel":
        return _multilabel(info, probes, [oof(i) for i in range(len(probes))], Y.astype(np.int64), rows, classes,
                           folds, judge)
    y = Y.astype(np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if (counts > 0).sum() < 2:
        info["skipped"] = "fewer than two classes among the labelled rows"
        return info
    judged = [{**_judge(y, oof(i, n_classes=len(classes))), "given": y} for i in range(len(probes))]
    cl = _combine(judged)
    first = judged[0]
    info.update(oof_accuracy=first["accuracy"], unflagged_accuracy=first["unflagged_accuracy"],
                constant_accuracy=first["constant"], temperature=first["temperature"], too_weak=cl["too_weak"],
                consensus=len(cl["used"]),
                checks=[_check_summary(p, j, i in cl["used"]) for i, (p, j) in enumerate(zip(probes, judged, strict=True))])
    flagged = np.flatnonzero(cl["flagged"])
    flagged = flagged[np.argsort(cl["self_confidence"][flagged], kind="stable")]
    if info["too_weak"] and judge:  # kept for benchmarks/label_errors.py; never shown nor written
        info["withheld"] = {"n_estimated": cl["n_estimated"], "rows": rows[flagged].tolist()}
        return info
    info["n_estimated"] = cl["n_estimated"]
    info["flags"] = [
        {"row": int(rows[i]), "given": classes[y[i]], "suggested": classes[cl["suggested"][i]],
         "score": float(cl["self_confidence"][i]), "p_suggested": float(cl["p_suggested"][i])}
        for i in flagged
    ]
    info["n_flagged"] = len(flagged)
    return info


def _multilabel(info: dict[str, Any], probes: list[Probe], P_each: list[np.ndarray], Y: np.ndarray, rows: np.ndarray,
                classes: list[str], folds: int, judge: bool) -> dict[str, Any]:
    per_label = []
    flags: dict[int, list[tuple[int, float]]] = {}
    estimated = 0.0
    accs = []
    for k, name in enumerate(classes):
        yk = Y[:, k]
        rec: dict[str, Any] = {"label": name, "oof_accuracy": None, "too_weak": None, "n_estimated": None,
                               "n_flagged": 0}
        per_label.append(rec)
        fitted = [i for i, P in enumerate(P_each) if not np.isnan(P[:, k]).any()]
        if not fitted:
            rec["too_weak"] = f"not fitted, or fewer than {folds} positives or negatives"
            continue
        judged = [{**_judge(yk, np.stack([1 - P_each[i][:, k], P_each[i][:, k]], 1)), "given": yk} for i in fitted]
        cl = _combine(judged)
        first = judged[0]
        rec["temperature"] = first["temperature"]
        rec["oof_accuracy"] = first["accuracy"]
        accs.append(first["accuracy"])
        rec["consensus"] = len(cl["used"])
        rec["too_weak"] = cl["too_weak"]
        if rec["too_weak"] and judge:
            continue
        rec["n_estimated"] = cl["n_estimated"]
        estimated += cl["n_estimated"]
        for i in np.flatnonzero(cl["flagged"]):
            flags.setdefault(int(i), []).append((k, float(cl["self_confidence"][i])))
        rec["n_flagged"] = int(cl["flagged"].sum())
    info["per_label"] = per_label
    info["oof_accuracy"] = float(np.mean(accs)) if accs else None
    info["consensus"] = max((r.get("consensus") or 1 for r in per_label), default=1)
    judged_labels = [r for r in per_label if r["n_estimated"] is not None]
    if not judged_labels:
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


def probe_from_cross_fit(x: Any) -> Probe:
    """A cross-fitted fine-tune (``reporting._data.CrossFit``) as a check: its own out-of-fold probabilities."""
    r = x.record
    k = r.get("folds")
    return Probe(None, "fine-tune", None, oof=x,
                 backbone=f"{r.get('backbone')} fine-tuned ({k}-fold cross-fit)",
                 basis=f"{k} fine-tunes ({x.dir.name}), each trained without one fold of the labelled images and "
                       "scoring only that fold")


def default_probes(caches: list[Any], labels: dict[str, str]) -> list[Probe]:
    """Without fitted heads: on each cache, the logistic head with its C chosen on the validation split
    (5-fold CV on train when there is none), best validation score first (``labels`` names each cache's
    backbone by path)."""
    from featpipe.errors import HeadError
    from featpipe.heads import LogisticHead

    found: list[tuple[float, int, Probe]] = []
    for n, c in enumerate(caches):
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
        found.append((-score, n, Probe(
            c, "logistic", params, {"seed": c.seed}, backbone=labels.get(str(c.path), ""),
            basis=f"no fitted heads given: the logistic head with its C chosen "
                  f"{'by 5-fold CV on train' if cv else 'on the validation split'} ({_params_text(params)})")))
    return [p for _, _, p in sorted(found, key=lambda t: t[:2])]
