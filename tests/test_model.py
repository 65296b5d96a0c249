"""FeaturepipeModel: sklearn-like use, save/load with checksum and version warnings, a fresh-process
round trip, and end to end from images (embed -> fit-head -> predict) with a tiny random backbone."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.exceptions import NotFittedError

from featpipe.bundle.io import load_model
from featpipe.errors import ModelError
from featpipe.heads.model import FeaturepipeModel, FeaturepipeVersionWarning
from test_heads import FAST

from _digits import task_data


def _fit(task="multiclass", head="logistic", **kw):
    X, y, split, classes = task_data(task, 300)
    m = FeaturepipeModel(head_name=head, task=task, classes=classes, head_params=FAST[head], **kw)
    m.fit(X[split == "train"], y[split == "train"], X[split == "val"], y[split == "val"])
    return m, X[split == "test"], y[split == "test"]


def test_model_predicts_class_names_and_records_its_state():
    m, Xte, yte = _fit("multiclass", seed=4)
    labels = m.predict(Xte)
    assert labels.dtype == object and set(labels) <= {str(d) for d in range(10)}
    assert (labels == yte.astype(str)).mean() > 0.8
    assert m.predict_proba(Xte).shape == (len(Xte), 10)
    assert m.thresholds_ is None and m.seed == 4 and m.head_name == "logistic"
    assert list(m.classes_) == [str(d) for d in range(10)] and "C" in m.params_
    assert {"scikit-learn", "numpy", "featpipe"} <= set(m.versions)
    assert 0.8 < m.score(Xte, yte) <= 1


def test_binary_and_multilabel_predictions_use_tuned_thresholds():
    mb, Xte, _ = _fit("binary")
    assert isinstance(mb.thresholds_, float) and mb.threshold_["rule"] == "plateau-centre"
    p = mb.predict_proba(Xte)
    assert p.shape[1] == 2
    expect = np.where(p[:, 1] >= mb.thresholds_, "three", "other")
    assert list(mb.predict(Xte)) == list(expect)
    ml, Xte, _ = _fit("multilabel")
    out = ml.predict(Xte)  # scikit-learn's indicator matrix, classes_ as columns
    assert out.shape == (len(Xte), 4) and set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(out, (ml.predict_proba(Xte) >= ml.thresholds_).astype(int))
    names = ml.predict_labels(Xte)
    assert all(isinstance(r, list) for r in names)
    assert [[str(c) for c, on in zip(ml.classes_, row, strict=True) if on] for row in out] == names
    assert set().union(*map(set, names)) <= {"even", "gt4", "is_zero", "rare"}
    assert ml.skipped_labels_[0]["label"] == "rare" and ml.thresholds_.shape == (4,)
    assert list(ml.thresholds_) == ml.threshold_["per_class"] and ml.threshold_["used"] == "per-class"
    mg, _, _ = _fit("multilabel", threshold_mode="global")
    assert (mg.thresholds_ == mg.threshold_["global"]).all()


def test_wrong_feature_width_and_unfitted_model():
    m, Xte, _ = _fit("binary")
    with pytest.raises(ValueError, match="X has 5 features"):
        m.predict(Xte[:, :5])
    with pytest.raises(ModelError, match="not fitted"):
        FeaturepipeModel().predict(Xte)
    with pytest.raises(NotFittedError):
        FeaturepipeModel().predict_proba(Xte)
    with pytest.raises(ModelError, match="no recorded backbone"):
        m.predict(["a.jpg"])


def test_save_load_checksum_and_version_warning(tmp_path):
    m, Xte, _ = _fit("binary")
    path = m.save(tmp_path / "m" / "model.joblib")
    side = tmp_path / "m" / "model.joblib.sha256"
    assert len(side.read_text().strip()) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_model(path)
    np.testing.assert_array_equal(back.predict_proba(Xte), m.predict_proba(Xte))

    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(path)
    path.write_bytes(data)
    side.unlink()
    with pytest.raises(ModelError, match="--no-verify"):
        load_model(path)
    assert load_model(path, verify=False).head_name == "logistic"

    m.versions = {**m.versions, "scikit-learn": "0.0.1"}
    m.save(path)
    with pytest.warns(FeaturepipeVersionWarning, match="scikit-learn 0.0.1"):
        load_model(path)
    import joblib

    with pytest.warns(FeaturepipeVersionWarning, match="scikit-learn 0.0.1"):  # plain joblib.load too
        joblib.load(path)
    (tmp_path / "x.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="cannot load"):
        load_model(tmp_path / "x.joblib", verify=False)


def test_fresh_process_loads_and_predicts_the_same(tmp_path):
    m, Xte, _ = _fit("multiclass", head="lgbm")
    m.save(tmp_path / "model.joblib")
    np.save(tmp_path / "X.npy", Xte)
    code = (
        "import joblib, numpy as np, sys; d = sys.argv[1]; m = joblib.load(d + '/model.joblib'); "
        "np.save(d + '/p.npy', m.predict_proba(np.load(d + '/X.npy'))); print(type(m).__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "FeaturepipeModel"
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), m.predict_proba(Xte))


# ------------------------------------------------------------------------------------ end to end


def test_end_to_end_embed_fit_head_predict_on_images(tmp_path, image_folder):
    from featpipe.cli import main

    from conftest import TINY, TINY_SIZE

    run = CliRunner()
    cache_dir = tmp_path / "cache"
    r = run.invoke(main, ["embed", "--data", str(image_folder), "--backbone", TINY, "--no-pretrained",
                          "--image-size", str(TINY_SIZE), "--cache-dir", str(cache_dir), "--quiet",
                          "--fractions", "0.5,0.25,0.25"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "models"
    r = run.invoke(main, ["fit-head", "--data", str(image_folder), "--backbone", TINY, "--no-pretrained",
                          "--image-size", str(TINY_SIZE), "--cache-dir", str(cache_dir),
                          "--fractions", "0.5,0.25,0.25", "--head", "logistic", "--out", str(out)])
    assert r.exit_code == 0, r.output
    (model_path,) = out.glob("*/logistic/model.joblib")
    metrics = json.loads((model_path.parent / "metrics.json").read_text())
    assert metrics["cache"]["backbone"]["name"] == TINY and metrics["task"] == "multiclass"

    bad = tmp_path / "new" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not an image")
    imgs = sorted((image_folder / "cat").glob("*.png"))[:2] + sorted((image_folder / "fox").glob("*.png"))[:1]
    for i, p in enumerate(imgs):
        (tmp_path / "new" / f"img{i}.png").write_bytes(p.read_bytes())

    model = load_model(model_path)
    model.embed_device = "cpu"
    labels = model.predict(tmp_path / "new")  # a directory: expanded recursively
    assert len(labels) == 4 and labels[0] is None  # broken.jpg sorts first
    assert set(labels[1:]) <= {"cat", "dog", "fox"}
    assert [p for p, _ in model.last_errors_] == [str(bad)]
    assert np.isnan(model.predict_proba([str(bad)])).all()

    csv_path = tmp_path / "pred.csv"
    r = run.invoke(main, ["predict", "--model", str(model_path), str(tmp_path / "new"), "--out", str(csv_path),
                          "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = csv_path.read_text().splitlines()
    assert rows[0].split(",")[:3] == ["path", "label", "error"] and len(rows) == 5
    assert "broken.jpg" in r.output and "unreadable" in r.output
    assert "1 of 4 input images unreadable; predicted 3" in r.output
    r = run.invoke(main, ["predict", "--model", str(model_path), str(imgs[0]), "--device", "cpu"])
    assert r.exit_code == 0 and "cat=" in r.output and "unreadable" not in r.output
    r = run.invoke(main, ["predict", "--model", str(model_path), str(bad), str(tmp_path / "gone.jpg"), "--device", "cpu"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1] == "error: nothing predicted: all 2 input images were unreadable"


def test_cli_predict_bad_model_is_one_line(tmp_path):
    from featpipe.cli import main

    (tmp_path / "m.joblib").write_bytes(b"junk")
    r = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "m.joblib"), str(tmp_path)])
    assert r.exit_code == 2 and "checksum" in r.output
