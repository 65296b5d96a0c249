"""Heads on real digits features: every head x task, search on val only, refit, seeds, bad inputs,
and the fit-head artifacts / CLI on real HDF5 caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from featpipe.errors import HeadError
from featpipe.hardware import available_cpus
from featpipe.heads import HEADS, LGBMHead, LogisticHead, balanced_weights, head_names, make_head

from _digits import task_data, write_cache

FAST = {
    "logistic": {"C_grid": (1e-3, 1e-1, 1e1), "refine_steps": 1},
    "mlp": {"hidden": (32, 16), "max_epochs": 20, "patience": 4, "weight_decay_grid": (1e-4,), "oof_folds": 2},
    "lgbm": {"grid": ({"num_leaves": 7, "learning_rate": 0.2, "min_child_samples": 5, "feature_fraction": 0.8},
                      {"num_leaves": 15, "learning_rate": 0.2, "min_child_samples": 10, "feature_fraction": 1.0}),
             "n_estimators": 40, "early_stopping_rounds": 10, "n_jobs": 1},
}


def _split(task, n=400):
    X, y, split, classes = task_data(task, n)
    return [(X[split == s], y[split == s]) for s in ("train", "val", "test")], classes


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_fits_every_task(name, task):
    ((Xtr, ytr), (Xva, yva), (Xte, yte)), classes = _split(task)
    kw = {} if task == "multilabel" else {"n_classes": len(classes)}
    head = make_head(name, task=task, **FAST[name]).fit(Xtr, ytr, Xva, yva, **kw)
    p = head.predict_proba(Xte)
    assert p.shape == (len(Xte), len(classes))
    assert head.val_proba_.shape == (len(Xva), len(classes))
    assert head.search_ and all("val_score" in s for s in head.search_)
    if task == "multilabel":
        # 'rare' has one train positive: reported and predicted with a constant prior
        assert [s["label"] for s in head.skipped_labels_] == [3]
        assert "positive" in head.skipped_labels_[0]["reason"]
        assert np.ptp(p[:, 3]) == 0
        acc = ((p[:, :3] >= 0.5) == yte[:, :3]).mean()
        assert acc > 0.8
    else:
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        if task == "binary":
            from sklearn.metrics import roc_auc_score

            assert roc_auc_score(yte, p[:, 1]) > 0.9
        else:
            assert (p.argmax(1) == yte).mean() > 0.7  # chance is 0.1


def test_logistic_coarse_then_refined_grid_and_preprocess_option():
    ((Xtr, ytr), (Xva, yva), _), _ = _split("multiclass")
    h = LogisticHead(C_grid=(1e-4, 1e-2, 1.0), refine_steps=2, preprocess="l2").fit(Xtr, ytr, Xva, yva)
    cs = [s["params"]["C"] for s in h.search_]
    assert cs[:3] == [1e-4, 1e-2, 1.0] and len(cs) == 7  # 3 coarse + 2 rounds of 2
    best_coarse = max(h.search_[:3], key=lambda s: (s["val_score"], -s["val_log_loss"]))["params"]["C"]
    assert cs[3:5] == pytest.approx([best_coarse * 10 ** -0.5, best_coarse * 10 ** 0.5])
    assert h.preprocessor_.kind == "l2"
    norms = np.linalg.norm(h.preprocessor_.transform(Xtr), axis=1)
    np.testing.assert_allclose(norms, 1.0)


@pytest.mark.parametrize("name", list(HEADS))
def test_same_seed_gives_identical_model(name):
    ((Xtr, ytr), (Xva, yva), (Xte, _)), _ = _split("binary")
    a = make_head(name, task="binary", seed=3, **FAST[name]).fit(Xtr, ytr, Xva, yva)
    b = make_head(name, task="binary", seed=3, **FAST[name]).fit(Xtr, ytr, Xva, yva)
    np.testing.assert_array_equal(a.predict_proba(Xte), b.predict_proba(Xte))
    assert a.params_ == b.params_


def test_refit_train_val_keeps_chosen_config_and_lgbm_iterations():
    ((Xtr, ytr), (Xva, yva), (Xte, _)), _ = _split("multiclass")
    a = LGBMHead(refit="train", **FAST["lgbm"]).fit(Xtr, ytr, Xva, yva)
    b = LGBMHead(refit="train+val", **FAST["lgbm"]).fit(Xtr, ytr, Xva, yva)
    assert a.params_ == b.params_
    assert b.model_.n_estimators == a.params_["n_estimators"]
    assert b.preprocessor_.mean_ == pytest.approx(np.vstack([Xtr, Xva]).mean(0))
    np.testing.assert_array_equal(a.val_proba_, b.val_proba_)  # val scores stay held-out
    assert not np.array_equal(a.predict_proba(Xte), b.predict_proba(Xte))


class _OneAtATimeLGBM(LGBMHead):
    """The LightGBM head with its configurations and folds fitted one after another."""

    def _parallel_fits(self, X):
        return 1


@pytest.mark.parametrize(("task", "kw"), [("multiclass", {"refit": "train+val"}), ("multilabel", {"cv": 3})])
def test_lgbm_fits_side_by_side_equal_fits_one_at_a_time(task, kw):
    ((Xtr, ytr), (Xva, yva), (Xte, _)), _ = _split(task)
    side = LGBMHead(task=task, **kw, **FAST["lgbm"])
    assert side._parallel_fits(Xtr) == available_cpus()
    a = side.fit(Xtr, ytr, Xva, yva)
    b = _OneAtATimeLGBM(task=task, **kw, **FAST["lgbm"]).fit(Xtr, ytr, Xva, yva)
    assert a.search_ == b.search_ and a.params_ == b.params_
    np.testing.assert_array_equal(a.oof_proba_, b.oof_proba_)
    np.testing.assert_array_equal(a.predict_proba(Xte), b.predict_proba(Xte))


def test_head_fits_run_with_single_threaded_blas():
    """scipy's L-BFGS-B is several times slower with threaded OpenBLAS: fits limit BLAS to one thread."""
    from threadpoolctl import threadpool_info

    seen = []

    class Probe(LogisticHead):
        def _fit_one(self, *args, **kw):
            seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
            return super()._fit_one(*args, **kw)

    ((Xtr, ytr), (Xva, yva), _), _ = _split("binary")
    Probe(task="binary", C_grid=(1e-2,), refine_steps=0).fit(Xtr, ytr, Xva, yva)
    assert seen and set(seen) == {1}


def test_balanced_class_weight():
    y = np.array([0] * 8 + [1] * 2)
    w = balanced_weights(y)
    assert w[-1] / w[0] == pytest.approx(8 / 2)  # pos_weight = negatives / positives
    ((Xtr, ytr), (Xva, yva), (Xte, _)), _ = _split("binary")
    kw = {"C_grid": (1e-2,), "refine_steps": 0}
    plain = LogisticHead(task="binary", **kw).fit(Xtr, ytr, Xva, yva)
    bal = LogisticHead(task="binary", class_weight="balanced", **kw).fit(Xtr, ytr, Xva, yva)
    assert bal.predict_proba(Xte)[:, 1].mean() > plain.predict_proba(Xte)[:, 1].mean()


def test_multiclass_class_missing_from_train_is_reported_and_never_predicted():
    ((Xtr, ytr), (Xva, yva), (Xte, _)), _ = _split("multiclass")
    keep = ytr != 7
    h = LogisticHead(**FAST["logistic"]).fit(Xtr[keep], ytr[keep], Xva, yva, n_classes=10)
    assert h.skipped_labels_ == [{"label": 7, "reason": "no training examples: never predicted"}]
    p = h.predict_proba(Xte)
    assert p.shape[1] == 10 and (p[:, 7] == 0).all()


def test_bad_inputs_are_head_errors():
    ((Xtr, ytr), (Xva, yva), _), _ = _split("binary")
    with pytest.raises(HeadError, match="only one class"):
        LogisticHead(task="binary").fit(Xtr, np.zeros_like(ytr), Xva, yva, n_classes=2)
    with pytest.raises(HeadError, match="validation split is empty"):
        LogisticHead(task="binary").fit(Xtr, ytr, Xva[:0], yva[:0])
    bad = Xtr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(HeadError, match="nan"):
        LogisticHead(task="binary").fit(bad, ytr, Xva, yva)
    with pytest.raises(HeadError, match="unknown head"):
        head_names("svm")
    with pytest.raises(HeadError, match="preprocessing"):
        LogisticHead(preprocess="pca").fit(Xtr, ytr, Xva, yva)
    h = LogisticHead(task="binary", **FAST["logistic"]).fit(Xtr, ytr, Xva, yva)
    with pytest.raises(HeadError, match="features per row"):
        h.predict_proba(Xtr[:, :10])


# --------------------------------------------------------------------------- caches, artifacts, CLI


def _cli(args):
    from featpipe.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_fit_cache_artifacts_follow_the_contract(tmp_path, task):
    from featpipe.features.cache import FeatureCache
    from featpipe.runs.fit import fit_cache, write_run

    cache = FeatureCache.open(write_cache(tmp_path / f"digits-{task}.h5", task, n=300))
    (run,) = fit_cache(cache, "logistic", head_params={"logistic": FAST["logistic"]}, refit="train+val")
    d = write_run(run, tmp_path / "models")
    assert d == tmp_path / "models" / f"digits-{task}" / "logistic"
    m = json.loads((d / "metrics.json").read_text())
    for k in ("featpipe_version", "head", "task", "classes", "metric", "seed", "cache", "params", "search",
              "refit", "threshold", "scores", "gap", "fit_seconds", "created", "versions", "skipped_labels"):
        assert k in m, k
    assert set(m["cache"]) >= {"path", "key", "backbone", "layer", "feature_dim", "embed_seconds", "dataset"}
    assert m["refit"] == "train+val" and m["threshold"]["rule"] == "plateau-centre"
    assert set(m["scores"]) == {"train", "val", "test", "fit_rows", "oof"}  # refit train+val
    assert m["scores"]["test"]["n"] == int((cache.splits == "test").sum())
    t = m["threshold"]
    if task == "multilabel":
        assert m["metric"] == "micro_f1" and len(t["per_class"]) == 4
        assert m["skipped_labels"][0]["label"] == "rare"
        assert m["scores"]["test"]["per_class"]["rare"]["f1"] is None or m["scores"]["test"]["per_class"]["rare"]["f1"] == 0
    else:
        assert t["per_class"] is None and 0 < t["global"] < 1
        assert len(t["curve"]["thresholds"]) == len(t["curve"]["scores"])
    z = np.load(d / "predictions.npz")
    assert set(z.files) == {"ids", "paths", "split", "y_true", "proba", "pred"}
    assert z["proba"].dtype == np.float32 and z["proba"].shape == (len(cache), len(cache.classes))
    assert set(z["split"]) == {"train", "val", "test"}
    assert (d / "model.joblib.sha256").read_text().strip() != ""


def test_cli_fit_head_all_heads_prints_table(tmp_path):
    p = write_cache(tmp_path / "digits-mc.h5", "multiclass", n=240)
    out = tmp_path / "models"
    r = _cli(["fit-head", "--cache", str(p), "--head", "logistic", "--refit", "train+val", "--class-weight",
              "balanced", "--preprocess", "l2", "--seed", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "logistic" in r.output and "accuracy" in r.output
    m = json.loads((out / "digits-mc" / "logistic" / "metrics.json").read_text())
    assert (m["seed"], m["preprocess"], m["class_weight"]) == (1, "l2", "balanced")


def test_cli_fit_head_bad_inputs_one_line_exit_2(tmp_path):
    split = np.array(["train"] * 200 + ["test"] * 40)
    no_val = write_cache(tmp_path / "noval.h5", "multiclass", n=240, split=split)
    r = _cli(["fit-head", "--cache", str(no_val), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "validation split" in r.output and "Traceback" not in r.output
    _, y, _, _ = task_data("multiclass", 240)
    one_class_split = np.where(np.arange(240) % 2 == 0, "val", "test").astype(object)
    one_class_split[np.flatnonzero(y == 3)[:5]] = "train"  # train holds only digit 3
    one = write_cache(tmp_path / "one.h5", "multiclass", n=240, split=one_class_split)
    r = _cli(["fit-head", "--cache", str(one), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "only one class" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = _cli(["fit-head", "--cache", str(tmp_path / "missing.h5")])
    assert r.exit_code == 2 and "not found" in r.output
    r = _cli(["fit-head", "--cache", str(no_val), "--head", "svm"])
    assert r.exit_code == 2 and "svm" in r.output


def test_cli_fit_head_incomplete_cache(tmp_path):
    import h5py

    p = write_cache(tmp_path / "inc.h5", "binary", n=120)
    with h5py.File(p, "a") as f:
        f.attrs["completed"] = False
        f["status"][:10] = 0
    r = _cli(["fit-head", "--cache", str(p)])
    assert r.exit_code == 2 and "incomplete" in r.output


def test_both_mlp_heads_stop_by_one_rule():
    """The metric decides, NaN counts as worst, a lower loss breaks ties; the best epoch's weights are kept."""
    import torch

    from featpipe.heads import _mlp, _streaming
    from featpipe.heads._mlp import EarlyStopping

    assert _streaming.EarlyStopping is EarlyStopping  # the out-of-core MLP uses the same rule
    net = torch.nn.Linear(2, 2)
    stop = EarlyStopping(patience=2)
    history = [(1, float("nan"), 0.9), (2, 0.5, 1.0), (3, 0.5, 0.8), (4, 0.5, 0.8 - 1e-9), (5, 0.4, 0.1)]
    stopped = []
    for epoch, score, loss in history:
        with torch.no_grad():
            net.weight.fill_(epoch)
        stopped.append(stop.update(epoch, net, score, loss))
    assert stopped == [False, False, False, False, True] and stop.best_epoch == 3
    stop.restore(net)
    assert torch.all(net.weight == 3)
    assert _mlp.validation_pass(net, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                                torch.nn.CrossEntropyLoss(reduction="none"))[0].dtype == np.float64


@pytest.mark.slow
def test_cross_val_proba_is_out_of_fold_at_the_given_configuration():
    """Every row is scored by the configuration fitted on the other folds only (the label check's
    probabilities): the logistic head equals a hand-made K-fold loop; every head scores every row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from featpipe.heads._base import kfold

    X, y, _, classes = task_data("multiclass", 300)
    P = LogisticHead(task="multiclass", seed=3).cross_val_proba(X, y, {"C": 0.1}, folds=4, n_classes=10)
    want = np.zeros_like(P)
    for a, b in kfold(y, 4, 3):
        sc = StandardScaler().fit(X[a])
        m = LogisticRegression(C=0.1, max_iter=500, random_state=3).fit(sc.transform(X[a]), y[a])
        want[np.ix_(b, m.classes_)] = m.predict_proba(sc.transform(X[b]))
    np.testing.assert_allclose(P, want, atol=1e-3)  # L-BFGS stops within its tolerance
    params = {"mlp": {"weight_decay": 1e-4, "epochs": 30}, "lgbm": {**FAST["lgbm"]["grid"][0], "n_estimators": 10}}
    for name, p in params.items():
        cfg = {k: v for k, v in FAST[name].items() if k in ("hidden", "n_jobs")}
        Q = make_head(name, task="multiclass", **cfg).cross_val_proba(X, y, p, folds=3, n_classes=10)
        assert Q.shape == (300, 10) and np.allclose(Q.sum(1), 1) and (Q.argmax(1) == y).mean() > 0.5
    Xm, Ym, _, _ = task_data("multilabel", 300)
    Qm = LogisticHead(task="multilabel").cross_val_proba(Xm, Ym, {"0": {"C": 1.0}, 1: {"C": 1.0}, 2: None, 3: None})
    assert np.isfinite(Qm[:, :2]).all() and np.isnan(Qm[:, 2:]).all()  # 2: left out; 3: one positive
