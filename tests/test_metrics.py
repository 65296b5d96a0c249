"""evaluate(): contract keys, undefined metrics as nan/null without warnings, format_table."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from featpipe.errors import HeadError
from featpipe.heads.metrics import evaluate, format_table, jsonable, main_metric_key


def _onehot_proba(pred, C):
    p = np.full((len(pred), C), 0.1 / max(C - 1, 1))
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_binary_keys_and_values_match_sklearn():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    proba1 = np.array([0.1, 0.6, 0.7, 0.9, 0.4, 0.2, 0.8, 0.3])
    proba = np.stack([1 - proba1, proba1], 1)
    pred = (proba1 >= 0.5).astype(int)
    m = evaluate(y, proba, pred, "binary", ["neg", "pos"], "f1")
    for k in ("accuracy", "precision_binary", "recall_binary", "f1_binary", "f1_micro", "f1_macro",
              "f1_weighted", "roc_auc", "average_precision", "confusion_matrix", "per_class", "main", "n"):
        assert k in m
    assert "f1_samples" not in m and "most_confused" not in m
    assert m["f1_binary"] == pytest.approx(f1_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["precision_weighted"] == pytest.approx(precision_score(y, pred, average="weighted"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba1))
    assert m["main"] == m["f1_binary"]
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["per_class"]["pos"]["support"] == 4


def test_multiclass_absent_class_is_nan_json_null_and_no_warnings():
    y = np.array([0, 0, 1, 1, 1, 0])  # class "c" never occurs and is never predicted
    pred = np.array([0, 1, 1, 1, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate(y, _onehot_proba(pred, 3), pred, "multiclass", ["a", "b", "c"])
    assert math.isnan(m["per_class"]["c"]["f1"]) and math.isnan(m["per_class"]["c"]["roc_auc"])
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1]))
    assert m["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro", labels=[0, 1]))
    assert m["main"] == m["accuracy"] == pytest.approx(4 / 6)
    assert m["most_confused"] == [["a", "b", 1], ["b", "a", 1]]
    text = json.dumps(jsonable(m), allow_nan=False)
    assert json.loads(text)["per_class"]["c"]["f1"] is None


def test_multiclass_most_confused_sorted_by_count():
    y = np.array([0, 0, 0, 1, 2, 2, 2])
    pred = np.array([2, 2, 0, 1, 1, 0, 0])
    m = evaluate(y, _onehot_proba(pred, 3), pred, "multiclass", ["x", "y", "z"])
    assert m["most_confused"][:2] == [["x", "z", 2], ["z", "x", 2]]
    assert np.array(m["confusion_matrix"]).sum() == len(y)


def test_multilabel_samples_map_and_per_class_confusion():
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.uint8)
    P = np.array([[0.9, 0.2, 0.1], [0.8, 0.4, 0.1], [0.3, 0.9, 0.2], [0.1, 0.1, 0.1]])
    pred = (P >= 0.5).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate(Y, P, pred, "multilabel", ["a", "b", "rare"], "micro_f1")
    assert m["f1_micro"] == pytest.approx(f1_score(Y, pred, average="micro"))
    assert "f1_samples" in m and 0 < m["f1_samples"] <= 1
    assert m["accuracy"] == pytest.approx(3 / 4)  # subset accuracy
    assert m["average_precision"] == pytest.approx(1.0)  # mAP over defined labels (a, b)
    assert m["confusion_matrix"][1] == [[2, 0], [1, 1]]
    assert math.isnan(m["per_class"]["rare"]["recall"])
    assert m["main"] == m["f1_micro"]


def test_nan_rows_are_ignored():
    y = np.array([0, 1, 1])
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [np.nan, np.nan]])
    m = evaluate(y, proba, np.array([0, 1, -1]), "binary", ["n", "p"], "accuracy")
    assert m["n"] == 2 and m["accuracy"] == 1.0


def test_main_metric_names():
    assert main_metric_key("macro_f1", "multiclass") == "f1_macro"
    assert main_metric_key(None, "multilabel") == "f1_micro"
    with pytest.raises(HeadError, match="unknown metric"):
        main_metric_key("top5", "multiclass")
    with pytest.raises(HeadError, match="not defined"):
        main_metric_key("samples_f1", "binary")


def test_format_table_lists_each_head_with_scores():
    rows = [
        {"run": "r1", "head": "logistic", "metric": "accuracy", "gap": 0.05, "fit_seconds": 1.25,
         "scores": {"train": {"main": 0.99}, "val": {"main": 0.94}, "test": {"main": float("nan")}}},
        {"run": "r1", "head": "lgbm", "metric": "accuracy", "gap": None, "fit_seconds": 3.0,
         "scores": {"train": {"main": 1.0}, "val": {"main": 0.9}, "test": None}},
    ]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["run", "head", "metric", "train", "val", "test"]
    assert "0.9400" in lines[2] and "logistic" in lines[2] and "1.2" in lines[2]
    assert "lgbm" in lines[3] and "-" in lines[3].split()


# --------------------------------------------------------------------------- one metric table

from featpipe.heads.metrics import (  # noqa: E402
    METRIC_TABLE,
    _weighted_scores,
    bootstrap_ci,
    decision_curve,
    get_metric,
    sklearn_score,
    threshold_metric,
)


def _random_task(task, n=60, C=4, seed=0):
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        Y = (rng.random((n, C)) < [0.5, 0.2, 0.05, 0.0]).astype(np.uint8)  # last label never occurs
        P = np.clip(Y * 0.4 + rng.random((n, C)) * 0.6, 0, 1)
        P[:, 3] = rng.random(n) * 0.4  # ... and is never predicted
        return Y, P, (P >= 0.5).astype(np.uint8)
    C = 2 if task == "binary" else C
    y = rng.integers(0, C - (task == "multiclass"), n)  # multiclass: the last class is absent
    P = rng.random((n, C)) + np.eye(C)[y] * 0.8
    P /= P.sum(1, keepdims=True)
    return y, P, P.argmax(1)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_evaluate_counts_equal_the_sklearn_definitions_of_every_table_metric(task):
    """evaluate() keeps vectorised per-class counts (one pass for ~20 numbers); they must equal sklearn."""
    y, P, pred = _random_task(task)
    C = P.shape[1]
    m = evaluate(y, P, pred, task, [str(c) for c in range(C)])
    for name, metric in METRIC_TABLE.items():
        if task not in metric.keys:
            continue
        key = metric.keys[task]
        assert m[key] == pytest.approx(sklearn_score(key, task, y, P, pred), nan_ok=True), (name, key)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_decision_curves_equal_sklearn_at_every_threshold(task):
    y, P, _ = _random_task(task, seed=1)
    p = P[:, 1] if task == "binary" else P
    grid = np.array([0.1, 0.35, 0.5, 0.8])
    for name, metric in METRIC_TABLE.items():
        if task not in metric.keys or metric.needs_proba:
            continue
        curve = decision_curve(name, task, y, p, grid)
        for t, s in zip(grid, curve, strict=True):
            pred = (P[:, 1] >= t).astype(int) if task == "binary" else (P >= t).astype(np.uint8)
            assert s == pytest.approx(sklearn_score(metric.keys[task], task, y, P, pred), nan_ok=True), (name, t)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_bootstrap_weighted_scores_equal_sklearn_on_the_resampled_rows(task):
    y, P, pred = _random_task(task, n=40, seed=2)
    n = len(P)
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, n, n) for _ in range(3)]
    W = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
    C = P.shape[1]
    Yt = y.astype(bool) if task == "multilabel" else np.eye(C, dtype=bool)[y]
    Yp = pred.astype(bool) if task == "multilabel" else np.eye(C, dtype=bool)[pred]
    for name, metric in METRIC_TABLE.items():
        if task not in metric.keys:
            continue
        key = metric.keys[task]
        got = _weighted_scores(key, task, Yt, Yp, P, W)
        want = [sklearn_score(key, task, y[i], P[i], pred[i]) for i in idx]
        np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f"{name} {key}")


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.25 * y + rng.random(200) * 0.75, 0, 1)
    P, pred = np.stack([1 - p1, p1], 1), (p1 >= 0.5).astype(int)
    ci = bootstrap_ci("f1", "binary", y, P, pred, seed=0)
    assert ci == bootstrap_ci("f1", "binary", y, P, pred, seed=0)
    assert ci != bootstrap_ci("f1", "binary", y, P, pred, seed=1)
    point = f1_score(y, pred)
    assert ci[0] < point < ci[1] and ci[1] - ci[0] < 0.3
    wide = bootstrap_ci("f1", "binary", y[:40], P[:40], pred[:40], seed=0)
    assert wide[1] - wide[0] > ci[1] - ci[0]  # fewer test rows, wider interval
    lo, hi = bootstrap_ci("roc_auc", "binary", y, P, pred)
    assert lo < roc_auc_score(y, P[:, 1]) < hi
    assert bootstrap_ci("f1", "binary", y[:1], P[:1], pred[:1]) is None


def test_metric_table_entries():
    assert get_metric(None, "multiclass").name == "accuracy"
    assert get_metric("f1", "multiclass").keys["multiclass"] == "f1_macro"
    assert all(m.greater_is_better for m in METRIC_TABLE.values())
    assert METRIC_TABLE["roc_auc"].needs_proba and not METRIC_TABLE["f1"].needs_proba
    assert threshold_metric("roc_auc", "binary") == "f1" and threshold_metric("macro_f1", "binary") == "macro_f1"
    assert threshold_metric("map", "multilabel") == "micro_f1"


def test_format_table_shows_the_test_interval():
    rows = [{"run": "r", "head": "logistic", "metric": "f1", "gap": 0.0, "fit_seconds": 1.0,
             "scores": {"train": {"main": 1.0}, "val": {"main": 0.9}, "test": {"main": 0.8, "main_ci": [0.71, 0.88]}}}]
    assert "0.710-0.880" in format_table(rows)


# --------------------------------------------------------------------------- chance, paired, small, calibration

def _all_constants(task, n, C):
    """Every constant prediction a decision metric can see: each class, or each label subset."""
    if task == "multilabel":
        import itertools

        return [np.tile(np.array(S, np.uint8), (n, 1)) for S in itertools.product([0, 1], repeat=C)]
    return [np.full(n, k) for k in range(C)]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_best_constant_is_the_best_of_every_constant_prediction(task):
    """The chance level is the best any constant predictor scores on these rows, for every metric."""
    from featpipe.heads.metrics import best_constant

    rng = np.random.default_rng(4)
    n, C = 70, (2 if task == "binary" else 5 if task == "multiclass" else 5)
    if task == "multilabel":
        y = (rng.random((n, C)) < [0.55, 0.4, 0.2, 0.08, 0.0]).astype(np.uint8)
    else:
        y = rng.choice(C, n, p=[0.3, 0.7] if C == 2 else [0.1, 0.3, 0.15, 0.25, 0.2])
    classes = [f"c{k}" for k in range(C)]
    flat = np.full((n, C), 1 / C)
    for name, metric in METRIC_TABLE.items():
        if task not in metric.keys:
            continue
        key = metric.keys[task]
        got = best_constant(name, task, y, classes)
        if metric.needs_proba:
            want = 0.5 if key == "roc_auc" else (np.mean(y[:, :4].mean(0)) if task == "multilabel" else
                                                  (y == 1).mean() if task == "binary" else 1 / C)
        else:
            want = np.nanmax([sklearn_score(key, task, y, flat, p) for p in _all_constants(task, n, C)])
        assert got["value"] == pytest.approx(want), (name, got)
        assert got["rule"]
    # ten balanced classes: accuracy's chance level is 1/K, and a uniform guess is stated beside it
    y10 = np.repeat(np.arange(10), 7)
    acc = best_constant("accuracy", "multiclass", y10, [str(k) for k in range(10)])
    assert acc["value"] == pytest.approx(0.1) and acc["uniform"] == pytest.approx(0.1)
    # micro-F1 of a multilabel task: the best constant label set is named
    Y = np.array([[1, 1, 0]] * 6 + [[1, 0, 1]] * 3 + [[1, 0, 0]])
    ml = best_constant("micro_f1", "multilabel", Y, ["a", "b", "c"])
    assert ml["rule"] == "always {'a', 'b'}" and ml["value"] == pytest.approx(2 * 16 / (2 * 16 + 4 + 3))


def _accuracy_pair(n=300, extra=8, seed=0):
    """Two models on the same rows: ``b`` makes every mistake ``a`` makes and ``extra`` more."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pa = y.copy()
    wrong = rng.choice(n, 30, replace=False)
    pa[wrong] = (y[wrong] + 1) % 3
    pb = pa.copy()
    more = rng.choice(np.setdiff1d(np.arange(n), wrong), extra, replace=False)
    pb[more] = (y[more] + 2) % 3
    return y, (np.eye(3)[pa] * 0.8 + 0.2 / 3, pa), (np.eye(3)[pb] * 0.8 + 0.2 / 3, pb)


def test_paired_bootstrap_separates_what_overlapping_intervals_do_not():
    from featpipe.heads.metrics import paired_bootstrap

    y, a, b = _accuracy_pair()
    ia, ib = bootstrap_ci("accuracy", "multiclass", y, *a), bootstrap_ci("accuracy", "multiclass", y, *b)
    acc_a, acc_b = (a[1] == y).mean(), (b[1] == y).mean()
    assert ia[0] <= acc_b <= ia[1] and ib[0] <= acc_a <= ib[1]  # each lies in the other's interval
    d = paired_bootstrap("accuracy", "multiclass", y, b, a, seed=0)
    assert d["diff"] == pytest.approx(acc_b - acc_a) and d["n"] == len(y)
    lo, hi = d["ci"]
    assert lo <= d["diff"] <= hi < 0  # the same rows: b is worse, and the test set says so
    assert d == paired_bootstrap("accuracy", "multiclass", y, b, a, seed=0)
    same = paired_bootstrap("accuracy", "multiclass", y, a, a)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0]
    # every metric of the table: the point difference is sklearn's difference
    for name, metric in METRIC_TABLE.items():
        if "multiclass" not in metric.keys:
            continue
        key = metric.keys["multiclass"]
        want = sklearn_score(key, "multiclass", y, *a) - sklearn_score(key, "multiclass", y, *b)
        got = paired_bootstrap(name, "multiclass", y, a, b, n_resamples=200)
        assert got["diff"] == pytest.approx(want), name
        assert got["ci"][0] <= got["diff"] <= got["ci"][1], name
    with pytest.raises(HeadError, match="same rows"):
        paired_bootstrap("accuracy", "multiclass", y, a, (b[0][:-1], b[1][:-1]))


def test_small_test_sets_are_named_and_the_cli_table_warns():
    from featpipe.heads.metrics import small_sample

    tiny = evaluate(np.array([0, 1, 1]), np.eye(2)[[0, 1, 1]], np.array([0, 1, 1]), "binary", ["n", "p"])
    assert small_sample(tiny, "binary") == "3 test rows (fewer than 30); 2 classes have fewer than 5 test rows " \
                                           "(fewest: 'n', 1)"
    y = np.array([0] * 40 + [1] * 2)
    one = evaluate(y, np.eye(2)[y], y, "binary", ["n", "p"])
    assert small_sample(one, "binary") == "class 'p' has 2 test rows (fewer than 5)"
    big = evaluate(np.arange(60) % 2, np.eye(2)[np.arange(60) % 2], np.arange(60) % 2, "binary", ["n", "p"])
    assert small_sample(big, "binary") is None
    rows = [{"run": "r", "head": "logistic", "metric": "accuracy", "task": "binary", "gap": 0.0, "fit_seconds": 1.0,
             "scores": {"train": {"main": 1.0}, "val": {"main": 1.0}, "test": {**tiny, "main_ci": [1.0, 1.0]}}},
            {"run": "big", "head": "logistic", "metric": "accuracy", "task": "binary", "gap": 0.0, "fit_seconds": 1.0,
             "scores": {"train": {"main": 1.0}, "val": {"main": 1.0}, "test": {**big, "main_ci": [0.9, 1.0]}}}]
    text = format_table(rows)
    assert "1.000-1.000 !" in text and "0.900-1.000 !" not in text
    assert "! r: small test set: 3 test rows (fewer than 30)" in text and "! big" not in text


def test_calibration_bins_and_expected_calibration_error():
    from sklearn.calibration import calibration_curve

    from featpipe.heads.metrics import calibration

    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # calibrated by construction
    cal = calibration("binary", y, np.stack([1 - p, p], 1))
    assert cal["kind"] == "P(positive)" and cal["ece"] < 0.02 and cal["n"] == 20000
    true, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b["frequency"] for b in cal["bins"]], true, atol=1e-12)
    np.testing.assert_allclose([b["confidence"] for b in cal["bins"]], pred, atol=1e-12)
    # over-confident multiclass: 0.95 top-label confidence, right 60% of the time -> ECE 0.35
    n, C = 1000, 4
    yc = rng.integers(0, C, n)
    pred_c = np.where(np.arange(n) < 600, yc, (yc + 1) % C)
    P = np.full((n, C), 0.05 / (C - 1))
    P[np.arange(n), pred_c] = 0.95
    top = calibration("multiclass", yc, P)
    assert top["kind"] == "top-label confidence" and top["ece"] == pytest.approx(0.35)
    assert sum(b["count"] for b in top["bins"]) == n
    # multilabel: every (row, label) probability is one pooled prediction; nan rows are left out
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    PL = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.6], [np.nan, np.nan]])
    ml = calibration("multilabel", Y, PL)
    assert ml["n"] == 6 and ml["kind"] == "per-label probability, pooled"
    want = np.mean(np.abs(PL[:3].ravel() - Y[:3].ravel()))  # here every bin holds one prediction
    assert ml["ece"] == pytest.approx(want)
