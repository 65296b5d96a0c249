"""Threshold tuning: plateau-centre rule, binary and multilabel tuning, applying thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from featpipe.errors import HeadError
from featpipe.heads.thresholds import (
    RULE,
    apply_thresholds,
    plateau_centre,
    threshold_curve,
    tune_binary_threshold,
    tune_multilabel_thresholds,
)


def test_plateau_centre_prefers_widest_near_optimal_run_over_a_spike():
    t = np.round(np.arange(0, 1.01, 0.1), 2)
    #             0.0  0.1  0.2  0.3  0.4  0.5    0.6  0.7    0.8  0.9  1.0
    s = np.array([0.5, 0.6, 0.9, 0.6, 0.7, 0.895, 0.9, 0.899, 0.9, 0.6, 0.5])
    centre, lo, hi = plateau_centre(t, s, tol=0.01)
    assert (lo, hi) == (0.5, 0.8)
    assert centre == pytest.approx(0.65)
    # with no tolerance the jagged run breaks up, and the widest exact-max run is a single point
    centre0, lo0, hi0 = plateau_centre(t, s, tol=0.0)
    assert lo0 == hi0 and centre0 in (0.2, 0.6, 0.8)


def test_plateau_centre_undefined_curve_is_an_error():
    with pytest.raises(HeadError):
        plateau_centre(np.array([0.1, 0.2]), np.array([np.nan, np.nan]), 0.0)


def test_binary_threshold_separable_data_lands_in_the_gap():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.7, 0.8, 0.9])
    r = tune_binary_threshold(y, p, "f1")
    assert r.rule == RULE == "plateau-centre"
    assert 0.2 < r.global_ <= 0.7
    assert r.global_ == pytest.approx((0.205 + 0.7) / 2, abs=1e-6)
    assert r.val_score == 1.0
    assert len(r.curve_thresholds) == len(r.curve_scores) > 100
    d = r.to_dict()
    assert set(d) >= {"rule", "metric", "global", "per_class", "curve"}
    assert d["curve"]["thresholds"][0] < d["curve"]["thresholds"][-1]


@pytest.mark.parametrize("metric", ["accuracy", "f1", "balanced_accuracy"])
def test_binary_threshold_metrics_match_a_direct_computation(metric):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    t, s = threshold_curve(y, p, metric)
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    fn = {"accuracy": accuracy_score, "f1": f1_score, "balanced_accuracy": balanced_accuracy_score}[metric]
    for i in (10, 80, 150):
        assert s[i] == pytest.approx(fn(y, (p >= t[i]).astype(int)))
    r = tune_binary_threshold(y, p, metric)
    assert r.metric == metric and r.val_score >= s.max() - 0.5 / 200 - 1e-9


def test_bad_threshold_inputs():
    with pytest.raises(HeadError, match="does not depend on a threshold"):
        tune_binary_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "roc_auc")
    with pytest.raises(HeadError, match="empty"):
        tune_binary_threshold(np.array([]), np.array([]), "f1")


def test_multilabel_global_and_per_class_with_fallback():
    rng = np.random.default_rng(1)
    n = 300
    Y = np.zeros((n, 3), dtype=np.uint8)
    Y[:, 0] = rng.random(n) < 0.5
    Y[:, 1] = rng.random(n) < 0.3
    Y[:3, 2] = 1  # only 3 positives: below min_positives -> uses the global threshold
    P = np.clip(Y * 0.35 + rng.random((n, 3)) * 0.6, 0, 1)
    P[:, 1] = np.clip(Y[:, 1] * 0.2 + rng.random(n) * 0.3, 0, 1)  # label 1 needs a low threshold
    r = tune_multilabel_thresholds(Y, P, "micro_f1", min_positives=5)
    assert r.rule == "plateau-centre" and r.metric == "micro_f1"
    assert r.per_class_source == ["tuned", "tuned", "global"]
    assert r.per_class[2] == r.global_
    assert r.per_class[1] < 0.4 < r.per_class[0] + 0.1
    assert len(r.curve_scores) == len(r.curve_thresholds)
    for metric in ("macro_f1", "samples_f1"):
        assert 0 < tune_multilabel_thresholds(Y, P, metric).global_ < 1


def test_apply_thresholds_all_tasks_and_nan_rows():
    p = np.array([[0.7, 0.3], [0.2, 0.8], [np.nan, np.nan]])
    assert apply_thresholds(p, "binary", 0.25).tolist() == [1, 1, -1]
    assert apply_thresholds(p, "binary", 0.5).tolist() == [0, 1, -1]
    assert apply_thresholds(p, "multiclass", None).tolist() == [0, 1, -1]
    ml = apply_thresholds(p, "multilabel", np.array([0.5, 0.9]))
    assert ml.dtype == np.uint8 and ml.tolist() == [[1, 0], [0, 0], [0, 0]]


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "weighted_f1"])
def test_multilabel_thresholds_for_any_decision_metric_of_the_table(metric):
    """Today's code only tuned micro/macro/samples F1 and fell back to micro-F1 for the rest."""
    from featpipe.heads.metrics import sklearn_score

    rng = np.random.default_rng(4)
    Y = (rng.random((200, 3)) < [0.5, 0.3, 0.2]).astype(np.uint8)
    P = np.clip(Y * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
    r = tune_multilabel_thresholds(Y, P, metric)
    assert r.metric == metric
    key = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "weighted_f1": "f1_weighted"}[metric]
    want = sklearn_score(key, "multilabel", Y, P, (P >= r.global_).astype(np.uint8))
    assert r.val_score == pytest.approx(want)


def test_binary_thresholds_for_macro_and_weighted_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    p = np.clip(0.3 * y + rng.random(150) * 0.7, 0, 1)
    for metric, avg in (("macro_f1", "macro"), ("weighted_f1", "weighted")):
        t, s = threshold_curve(y, p, metric)
        assert s[60] == pytest.approx(f1_score(y, (p >= t[60]).astype(int), average=avg))
