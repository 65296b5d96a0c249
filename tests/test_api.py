"""The public Python API: ``import featpipe`` is the whole job, over the same functions the CLI runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

import featpipe
from featpipe.errors import FeaturepipeError

from conftest import TINY, TINY_SIZE, make_class_folders


def test_import_featpipe_stays_light():
    code = ("import sys, featpipe; heavy = [m for m in ('torch', 'timm', 'sklearn', 'h5py') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_job_in_python(tmp_path):
    data = featpipe.load_dataset(make_class_folders(tmp_path / "imgs", {"cat": 14, "dog": 14}))
    cache = featpipe.embed(data, TINY, pretrained=False, image_size=TINY_SIZE, cache_dir=tmp_path / "cache")
    assert cache.features.shape[0] == 28
    runs = featpipe.fit(cache, "logistic", out=tmp_path / "models")
    assert len(runs) == 1 and (runs[0].dir / "model.joblib").is_file()
    index = featpipe.report(tmp_path / "models", out=tmp_path / "report")
    assert index.name == "index.html" and index.is_file()
    model = featpipe.load_model(runs[0].dir / "model.joblib")
    pred = model.predict(data.paths[:4])
    assert set(pred) <= {"cat", "dog"} and len(pred) == 4


def test_embedder_is_a_scikit_learn_transformer(tmp_path):
    folder = make_class_folders(tmp_path / "imgs", {"a": 10, "b": 10})
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    y = np.array([p.split("/")[-2] for p in paths])
    pipe = make_pipeline(featpipe.Embedder(TINY, pretrained=False, image_size=TINY_SIZE), LogisticRegression())
    pipe.fit(paths, y)
    assert pipe.predict(paths).shape == (20,)
    twin = clone(pipe)  # unfitted copy with the same parameters
    assert twin.get_params()["embedder__backbone"] == TINY and not hasattr(twin.steps[0][1], "spec_")
    np.testing.assert_allclose(twin.fit(paths, y).predict_proba(paths), pipe.predict_proba(paths), atol=1e-6)


def test_embedder_names_an_unreadable_image_in_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    emb = featpipe.Embedder(TINY, pretrained=False, image_size=TINY_SIZE).fit()
    with pytest.raises(FeaturepipeError, match="1 of 1 images could not be embedded"):
        emb.transform([str(bad)])
    rows = featpipe.Embedder(TINY, pretrained=False, image_size=TINY_SIZE, on_error="nan").fit().transform([str(bad)])
    assert np.isnan(rows).all()


def test_version_is_the_one_in_pyproject():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert featpipe.__version__ == pyproject["project"]["version"]
