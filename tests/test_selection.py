"""--metric drives selection, early stopping and thresholds for every head and task; --refit train+val
tunes thresholds on out-of-fold probabilities; --cv K selects by K-fold CV; test scores carry a
bootstrap interval (real sklearn / LightGBM / torch fits on small digits features)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from featpipe.errors import HeadError
from featpipe.heads import LGBMHead, LogisticHead, MLPHead
from featpipe.heads._base import kfold
from featpipe.heads.metrics import DEFAULT_GRID
from featpipe.heads.model import FeaturepipeModel
from featpipe.heads.thresholds import tune_binary_threshold

from _digits import digits, task_data, write_cache

C_GRID = tuple(float(c) for c in np.logspace(-5, 1, 7))


def _split(task, n=400):
    X, y, split, classes = task_data(task, n)
    return [(X[split == s], y[split == s]) for s in ("train", "val", "test")], classes


def _imbalanced_multiclass():
    """Digits 5-9 kept at 10%: accuracy and macro-F1 prefer different regularisation here."""
    X, y, split = digits(600)
    keep = (y < 5) | (np.random.default_rng(0).random(len(y)) < 0.1)
    X, y, split = X[keep], y[keep], split[keep]
    return (X[split == "train"], y[split == "train"]), (X[split == "val"], y[split == "val"])


def test_multiclass_metric_selects_C_by_that_metric():
    (Xtr, ytr), (Xva, yva) = _imbalanced_multiclass()
    chosen = {}
    for metric, fn in (("accuracy", accuracy_score),
                       ("f1", lambda y, p: f1_score(y, p, average="macro"))):
        h = LogisticHead(metric=metric, C_grid=C_GRID, refine_steps=0, cv=0).fit(Xtr, ytr, Xva, yva, n_classes=10)
        assert h.best_val_score_ == pytest.approx(fn(yva, h.val_proba_.argmax(1)))
        assert h.best_val_score_ == max(s["val_score"] for s in h.search_)
        chosen[metric] = h.params_["C"]
    assert chosen["accuracy"] != chosen["f1"]  # today's code ranked multiclass f1 by accuracy


def test_multiclass_roc_auc_is_scored_on_probabilities():
    (Xtr, ytr), (Xva, yva) = _imbalanced_multiclass()
    h = LogisticHead(metric="roc_auc", C_grid=(1e-2, 1.0), refine_steps=0, cv=0).fit(Xtr, ytr, Xva, yva,
                                                                                      n_classes=10)
    P = h.val_proba_
    ref = np.mean([roc_auc_score(yva == k, P[:, k]) for k in range(10) if 0 < (yva == k).sum() < len(yva)])
    assert h.best_val_score_ == pytest.approx(ref)


@pytest.mark.parametrize("metric", ["balanced_accuracy", "roc_auc", "macro_f1"])
def test_binary_selection_and_threshold_follow_the_metric(metric):
    ((Xtr, ytr), (Xva, yva), _), classes = _split("binary")
    h = LogisticHead(task="binary", metric=metric, C_grid=(1e-3, 1e-1, 10.0), refine_steps=0).fit(Xtr, ytr, Xva, yva)
    p = h.val_proba_[:, 1]
    if metric == "roc_auc":
        ref = roc_auc_score(yva, p)
    else:
        fn = {"balanced_accuracy": balanced_accuracy_score,
              "macro_f1": lambda y, d: f1_score(y, d, average="macro")}[metric]
        ref = max(fn(yva, (p >= t).astype(int)) for t in DEFAULT_GRID)  # the score a tuned threshold reaches
    assert h.best_val_score_ == pytest.approx(ref)
    m = FeaturepipeModel("logistic", "binary", classes, metric=metric,
                         head_params={"C_grid": (1e-2,), "refine_steps": 0}).fit(Xtr, ytr, Xva, yva)
    assert m.threshold_["metric"] == (metric if metric != "roc_auc" else "f1")  # AUC has no threshold


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy"])
def test_multilabel_each_label_is_selected_by_its_form_of_the_metric(metric):
    ((Xtr, Ytr), (Xva, Yva), _), _ = _split("multilabel")
    h = LogisticHead(task="multilabel", metric=metric, C_grid=(1e-3, 1e-1, 10.0), refine_steps=0).fit(
        Xtr, Ytr, Xva, Yva)
    for k in range(3):  # label 3 ('rare') is skipped
        y, p = Yva[:, k], h.val_proba_[:, k]
        if metric == "roc_auc":
            ref = roc_auc_score(y, p)
        else:
            ref = max(accuracy_score(y, (p >= t).astype(int)) for t in DEFAULT_GRID)
        assert h.best_val_score_[k] == pytest.approx(ref)


def test_lgbm_early_stops_on_the_metric():
    ((Xtr, ytr), (Xva, yva), _), _ = _split("multiclass")
    h = LGBMHead(metric="balanced_accuracy", n_estimators=60, early_stopping_rounds=60, n_jobs=1, refit="train", cv=0,
                 grid=({"num_leaves": 7, "learning_rate": 0.2, "min_child_samples": 5, "feature_fraction": 1.0},),
                 pca=16).fit(Xtr, ytr, Xva, yva, n_classes=10)
    Xv = h.preprocessor_.transform(Xva)
    keys = []
    for i in range(1, h.model_.n_estimators_ + 1):
        P = h.model_.predict_proba(Xv, num_iteration=i)
        nll = -np.log(np.clip(P[np.arange(len(yva)), yva], 1e-15, 1)).mean()
        keys.append(balanced_accuracy_score(yva, P.argmax(1)) - 1e-6 * nll)
    assert h.model_.best_iteration_ == int(np.argmax(keys)) + 1
    assert h.params_["n_estimators"] == h.model_.best_iteration_


def test_mlp_early_stops_on_the_metric():
    ((Xtr, ytr), (Xva, yva), _), _ = _split("multiclass", n=300)
    kw = {"hidden": (16,), "max_epochs": 12, "patience": 12, "weight_decay_grid": (1e-4,), "metric": "macro_f1",
          "refit": "train", "cv": 0}  # early stopping on the val split
    h = MLPHead(**kw).fit(Xtr, ytr, Xva, yva, n_classes=10)
    Xt, Xv = h.preprocessor_.transform(Xtr), h.preprocessor_.transform(Xva)
    best, want = (-np.inf, -np.inf), None
    for e in range(1, 13):  # the first e epochs of the long run, replayed with the same seed
        P = h._fit_one({"weight_decay": 1e-4, "epochs": e}, Xt, ytr, None, 10, None, None).forward(Xv)
        s = f1_score(yva, P.argmax(1), average="macro")
        key = (round(s, 12), np.log(np.clip(P[np.arange(len(yva)), yva], 1e-15, 1)).mean())
        if key[0] > best[0] or (key[0] == best[0] and key[1] > best[1] + 1e-6):
            best, want = key, e
    assert h.model_.best_epoch == want


def test_refit_train_val_tunes_thresholds_on_out_of_fold_probabilities():
    ((Xtr, ytr), (Xva, yva), _), classes = _split("binary")
    hp = {"C_grid": (1e-2,), "refine_steps": 0}
    m = FeaturepipeModel("logistic", "binary", classes, refit="train+val", seed=3, head_params=hp).fit(
        Xtr, ytr, Xva, yva)
    Xp, yp = np.vstack([Xtr, Xva]), np.concatenate([ytr, yva])
    oof = np.zeros(len(yp))
    for a, b in kfold(yp, 5, 3):  # the documented recipe: seeded stratified 5-fold, standardised per fold
        mu, sd = Xp[a].mean(0), Xp[a].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        lr = LogisticRegression(C=1e-2, max_iter=500, random_state=3).fit((Xp[a] - mu) / sd, yp[a])
        oof[b] = lr.predict_proba((Xp[b] - mu) / sd)[:, 1]
    np.testing.assert_allclose(m.oof_proba_[:, 1], oof, atol=1e-6)
    assert m.thresholds_ == tune_binary_threshold(yp, oof, "f1").global_
    assert "out-of-fold" in m.threshold_["tuned_on"] and "5-fold, seed 3" in m.threshold_["tuned_on"]
    plain = FeaturepipeModel("logistic", "binary", classes, refit="train", head_params=hp).fit(Xtr, ytr, Xva, yva)
    assert "validation" in plain.threshold_["tuned_on"] and plain.oof_proba_ is None


def test_refit_multilabel_thresholds_from_oof():
    ((Xtr, Ytr), (Xva, Yva), _), classes = _split("multilabel")
    m = FeaturepipeModel("logistic", "multilabel", classes, refit="train+val",
                         head_params={"C_grid": (1e-1,), "refine_steps": 0}).fit(Xtr, Ytr, Xva, Yva)
    assert m.oof_proba_.shape == (len(Xtr) + len(Xva), 4)
    assert "out-of-fold" in m.threshold_["tuned_on"]
    assert not np.allclose(m.oof_proba_[:, 0], m.predict_proba(np.vstack([Xtr, Xva]))[:, 0])


def test_cv_selects_by_kfold_over_train_and_val():
    ((Xtr, ytr), (Xva, yva), _), _ = _split("multiclass", n=300)
    grid = (1e-3, 1e-1)
    h = LogisticHead(C_grid=grid, refine_steps=0, cv=3, seed=1).fit(Xtr, ytr, Xva, yva, n_classes=10)
    Xp, yp = np.vstack([Xtr, Xva]), np.concatenate([ytr, yva])
    for C, s in zip(grid, h.search_, strict=True):
        oof = np.zeros((len(yp), 10))
        for a, b in kfold(yp, 3, 1):
            mu, sd = Xp[a].mean(0), Xp[a].std(0)
            sd = np.where(sd > 1e-12, sd, 1.0)
            lr = LogisticRegression(C=C, max_iter=500, random_state=1).fit((Xp[a] - mu) / sd, yp[a])
            oof[np.ix_(b, lr.classes_)] = lr.predict_proba((Xp[b] - mu) / sd)
        assert s["val_score"] == pytest.approx(accuracy_score(yp, oof.argmax(1)), abs=1e-9)
    assert h.refit_ == "train+val" and h.selection_["by"] == "3-fold CV on train+val"
    assert h.oof_proba_.shape == (len(yp), 10) and h.preprocessor_.mean_ == pytest.approx(Xp.mean(0))
    with pytest.raises(HeadError, match="cv must be an integer >= 2"):
        LogisticHead(cv=1).fit(Xtr, ytr, Xva, yva)


def test_cv_multilabel_and_early_stopped_heads():
    ((Xtr, Ytr), (Xva, Yva), _), _ = _split("multilabel", n=300)
    h = LGBMHead(task="multilabel", cv=3, n_estimators=30, early_stopping_rounds=5, n_jobs=1, pca=8,
                 grid=({"num_leaves": 7, "learning_rate": 0.2, "min_child_samples": 5, "feature_fraction": 1.0},)
                 ).fit(Xtr, Ytr, Xva, Yva)
    assert [s["label"] for s in h.skipped_labels_] == [3]
    assert all(h.estimators_[k].n_estimators == h.params_[k]["n_estimators"] for k in range(3))
    assert h.val_proba_.shape == (len(Xva), 4)


# --------------------------------------------------------------------------- artifacts, CLI, pipeline


def test_metrics_json_records_selection_oof_gap_and_test_interval(tmp_path):
    from featpipe.features.cache import FeatureCache
    from featpipe.runs.fit import fit_cache, write_run

    cache = FeatureCache.open(write_cache(tmp_path / "digits-binary.h5", "binary", n=300))
    hp = {"logistic": {"C_grid": (1e-2, 1.0), "refine_steps": 0}}
    (run,) = fit_cache(cache, "logistic", head_params=hp, refit="train+val", n_bootstrap=200)
    m = json.loads((write_run(run, tmp_path / "models") / "metrics.json").read_text())
    sc = m["scores"]
    assert m["gap"] == pytest.approx(sc["fit_rows"]["main"] - sc["oof"]["main"])
    assert "out-of-fold" in m["gap_definition"] and sc["fit_rows"]["n"] == sc["oof"]["n"] == 225
    assert sc["val"]["selection"] is True and m["selection"]["optimistic"] is True
    assert "optimistic" in m["selection"]["note"] and "out-of-fold" in m["selection"]["thresholds_from"]
    lo, hi = sc["test"]["main_ci"]
    assert lo <= sc["test"]["main"] <= hi and hi - lo > 0
    assert m["bootstrap"]["seed"] == 0 and m["bootstrap"]["n_resamples"] == 200
    (again,) = fit_cache(cache, "logistic", head_params=hp, refit="train+val", n_bootstrap=200)
    assert again.metrics["scores"]["test"]["main_ci"] == [lo, hi]  # seeded


def test_cli_cv_and_pipeline_fit_cv(tmp_path):
    from featpipe.cli import main

    p = write_cache(tmp_path / "digits-mc.h5", "multiclass", n=240)
    out = tmp_path / "models"
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(p), "--cv", "3", "--metric", "macro_f1",
                                  "--bootstrap", "200", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "test 95% CI" in r.output
    m = json.loads((out / "digits-mc" / "logistic" / "metrics.json").read_text())
    assert m["selection"]["by"] == "3-fold CV on train+val" and m["selection"]["metric"] == "macro_f1"
    assert m["refit"] == "train+val" and m["metric"] == "macro_f1"
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(p), "--cv", "1"])
    assert r.exit_code == 2 and "--cv" in r.output


# ------------------------------------------------- small validation splits and the train+val default


def _tiny():
    """10 + 10 digits (3 vs 8) split 8/1/1 per class, as a 16/2/2 CSV split; the two val rows carry
    each other's label, so every C scores the same on them: rows that cannot tell configurations apart."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.permutation(np.flatnonzero(y == d))[:10] for d in (3, 8)])
    lab = np.repeat([0, 1], 10)
    lab[[8, 18]] = lab[[18, 8]]
    return X[rows].astype(np.float32), lab, np.array((["train"] * 8 + ["val", "test"]) * 2)


def test_tied_C_goes_to_the_centre_of_the_tied_run_not_the_strongest_regularisation():
    X, y, split = _tiny()
    tr, va = split == "train", split == "val"
    h = LogisticHead(task="binary", cv=0, refit="train").fit(X[tr], y[tr], X[va], y[va])
    assert len({s["val_score"] for s in h.search_}) == 1  # no C is better on these rows
    # the log-loss tie-break took the least confident model: C = 1.8e-7, below the grid (1e-6 .. 1e2)
    assert h.params_["C"] == pytest.approx(1e-2)  # the centre of the tied grid


def test_tiny_validation_split_selects_by_cv_says_so_and_records_it(tmp_path):
    from featpipe.cli import main

    from _digits import write_arrays_cache

    X, y, split = _tiny()
    p = write_arrays_cache(tmp_path / "tiny.h5", X, y, split, "binary", ["three", "eight"])
    out = tmp_path / "models"
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(p), "--bootstrap", "100", "--out", str(out)])
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.output.splitlines() if "too few to select on" in ln]
    assert len(said) == 1 and "2 rows (fewer than 30)" in said[0] and "5-fold CV on train+val" in said[0]
    m = json.loads((out / "tiny" / "logistic" / "metrics.json").read_text())
    assert m["selection"]["by"] == "5-fold CV on train+val" and m["selection"]["auto_cv"] in said[0]
    assert m["refit"] == "train+val" and "out-of-fold" in m["val_scores_from"]
    assert m["scores"]["fit_rows"]["accuracy"] >= 0.85  # a working model (val-selected: 0.5, all one class)
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(p), "--cv", "0", "--bootstrap", "100", "--out",
                                  str(out)])
    assert r.exit_code == 0 and "too few" not in r.output
    m = json.loads((out / "tiny" / "logistic" / "metrics.json").read_text())
    assert m["selection"]["by"] == "validation split" and m["selection"]["auto_cv"] is None


def test_a_class_with_few_validation_rows_selects_by_cv():
    (Xtr, ytr), (Xva, yva) = _imbalanced_multiclass()  # digits 5-9 have 1-4 val rows each
    h = LogisticHead(C_grid=(1e-2, 1.0), refine_steps=0).fit(Xtr, ytr, Xva, yva, n_classes=10)
    assert h.selection_["by"] == "5-fold CV on train+val" and h.refit_ == "train+val"
    assert h.selection_["auto_cv"].startswith("class (index ") and "(fewer than 5)" in h.selection_["auto_cv"]


def test_multilabel_labels_with_few_val_positives_are_selected_by_cv():
    X, y, split = digits(400)
    Y = np.stack([y % 2 == 0, y == 0], 1).astype(np.uint8)
    va = np.flatnonzero(split == "val")
    drop = va[Y[va, 1] == 1][3:]  # leave 3 zeros among the val rows
    keep = ~np.isin(np.arange(len(y)), drop)
    X, Y, split = X[keep], Y[keep], split[keep]
    tr, va = split == "train", split == "val"
    m = FeaturepipeModel("logistic", "multilabel", ["even", "zero"],
                         head_params={"C_grid": (1e-2, 1.0), "refine_steps": 0}).fit(X[tr], Y[tr], X[va], Y[va])
    sel = m.selection_
    assert sel["cv_labels"] == ["zero"] and sel["by"] == "validation split; 5-fold CV on train+val for 1 label(s)"
    assert sel["auto_cv"].startswith("label 'zero' has fewer than 5 validation positives or negatives")
    assert sel["auto_cv"].endswith("(1 of 2 labels), and every label refitted on train+val")
    assert m.skipped_labels_ == [] and m.oof_proba_.shape == (tr.sum() + va.sum(), 2)


def test_every_front_end_defaults_to_a_train_val_refit():
    import inspect

    from featpipe.cli.fit_head import fit_head
    from featpipe.pipeline._schema import FitConfig
    from featpipe.runs.fit import fit_cache

    defaults = {f.__name__: inspect.signature(f).parameters["refit"].default
                for f in (fit_cache, FeaturepipeModel, LogisticHead, MLPHead, LGBMHead)}
    defaults["FitConfig"] = FitConfig().refit
    defaults["fit-head --refit"] = next(p.default for p in fit_head.params if p.name == "refit")
    assert set(defaults.values()) == {"train+val"}, defaults


def test_default_fit_uses_every_labelled_row_and_out_of_fold_thresholds():
    ((Xtr, Ytr), (Xva, Yva), _), classes = _split("multilabel")
    m = FeaturepipeModel("logistic", "multilabel", classes,
                         head_params={"C_grid": (1e-1,), "refine_steps": 0}).fit(Xtr, Ytr, Xva, Yva)
    assert m.head_.refit_ == "train+val" and m.selection_["by"] == "validation split"
    assert "out-of-fold" in m.threshold_["tuned_on"] and m.oof_proba_.shape == (len(Xtr) + len(Xva), 4)
    est = m.head_.estimators_[0]
    ref = LogisticRegression(C=1e-1, max_iter=500, random_state=0).fit(
        m.head_.preprocessor_.transform(np.vstack([Xtr, Xva])), np.concatenate([Ytr[:, 0], Yva[:, 0]]))
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-4)  # fitted on train+val


def test_out_of_fold_folds_shrink_to_what_train_and_val_hold():
    X, y, _ = digits(200)
    rows = np.concatenate([np.flatnonzero(y == d)[:4] for d in (3, 8)])  # 4 + 4 rows in train+val
    Xs, ys = X[rows], (y[rows] == 8).astype(int)
    tr = np.array([0, 1, 2, 4, 5, 6])
    h = LogisticHead(task="binary", C_grid=(1e-2, 1.0), refine_steps=0).fit(Xs[tr], ys[tr], Xs[[3, 7]], ys[[3, 7]])
    assert h.refit_ == "train+val" and h.oof_folds_ == 4 and h.selection_["by"] == "4-fold CV on train+val"
    assert not np.isnan(h.oof_proba_).any()
