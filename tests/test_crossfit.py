"""Cross-fitted fine-tunes (``finetune --cross-fit K``): every labelled image scored by a model that never
trained on it, no run left behind for the leaderboard, and the report's label check using them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.finetune import OOF_FILE, RECORD_FILE, FinetuneConfig, cross_fit, folds_of

from conftest import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = ["--backbone", "scratch-cnn", "--width", "8", "--depth", "2", "--batch-size", "8", "--precision", "fp32",
        "--epochs", "2"]


def test_folds_partition_the_labelled_images_by_class(folder):
    m = load_dataset(folder)
    f = folds_of(m, 3, seed=0)
    y = np.asarray(m.labels)
    assert set(f.tolist()) == {0, 1, 2}
    for k in range(3):  # stratified: each fold holds a third of every class
        assert sorted(np.bincount(y[f == k], minlength=3).tolist()) == [6, 7, 7]
    assert (f == folds_of(m, 3, seed=0)).all() and (f != folds_of(m, 3, seed=1)).any()


def test_cross_fit_scores_every_labelled_image_out_of_fold(folder, tmp_path):
    out = tmp_path / "xf"
    r = CliRunner().invoke(main, ["finetune", "--data", str(folder), *OPTS, "--cross-fit", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "out-of-fold accuracy" in r.output and "label check" in r.output
    rec = json.loads((out / RECORD_FILE).read_text())
    with np.load(out / OOF_FILE) as z:
        proba, fold, labels = z["proba"], z["fold"], z["labels"]
    assert rec["folds"] == 3 and rec["n_scored"] == rec["n_labeled"] == 60 and rec["seed"] == 0
    assert not np.isnan(proba).any() and np.allclose(proba.sum(1), 1, atol=1e-4)
    assert sorted(s["n_held_out"] for s in rec["fold_scores"]) == sorted(np.bincount(fold).tolist())
    assert rec["oof_accuracy"] == pytest.approx(float((proba.argmax(1) == labels).mean()))
    # no model and no fold run is left: nothing of it can pass for a run on the leaderboard
    assert sorted(p.name for p in out.iterdir()) == sorted([OOF_FILE, RECORD_FILE])
    # the same command again has nothing to do; another seed is another cross-fit
    again = CliRunner().invoke(main, ["finetune", "--data", str(folder), *OPTS, "--cross-fit", "3", "--out", str(out)])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_a_killed_cross_fit_keeps_its_finished_folds(folder, tmp_path, monkeypatch):
    import featpipe.finetune._train as train

    m = load_dataset(folder)
    cfg = FinetuneConfig(**SMALL, epochs=1, cross_fit=2)
    real, calls = train.finetune, []

    def second_fold_dies(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train, "finetune", second_fold_dies)
    with pytest.raises(KeyboardInterrupt):
        cross_fit(m, cfg, tmp_path / "xf", progress=False, log=lambda s: None)
    assert (tmp_path / "xf" / "oof-fold-1.npz").is_file() and not (tmp_path / "xf" / RECORD_FILE).exists()
    monkeypatch.setattr(train, "finetune", real)
    lines: list[str] = []
    rec = cross_fit(m, cfg, tmp_path / "xf", progress=False, log=lines.append)
    assert "cross-fit fold 1/2: done earlier, kept" in lines and rec["n_scored"] == 60


def test_cli_refuses_one_fold(folder, tmp_path):
    r = CliRunner().invoke(main, ["finetune", "--data", str(folder), *OPTS, "--cross-fit", "1", "--out",
                                  str(tmp_path / "x")])
    assert r.exit_code == 2 and "at least 2 folds" in r.output


def test_the_report_uses_a_cross_fit_as_a_check(folder, tmp_path):
    from featpipe.backbones import resolve_spec
    from featpipe.features.embed import embed_dataset
    from featpipe.reporting import build_report

    from conftest import TINY

    m = load_dataset(folder)
    models = tmp_path / "models"
    cross_fit(m, FinetuneConfig(**SMALL, epochs=2, cross_fit=2), models / "check", progress=False, log=lambda s: None)
    res = embed_dataset(m, resolve_spec(TINY, pretrained=False, image_size=32), cache_dir=tmp_path / "cache",
                        progress=False)
    build_report(caches=[res.path], models_dir=models, out=tmp_path / "rep")
    li = next(json.loads(p.read_text())["label_issues"] for p in (tmp_path / "rep" / ".analysis").glob("*.json"))
    names = [c["name"] for c in li["checks"]]
    assert len(names) == 2 and names[1] == "scratch-cnn fine-tuned (2-fold cross-fit)", names
    assert li["checks"][1]["oof_accuracy"] is not None and li["n_used"] == 60
    # a damaged oof.npz takes no part and the report says why (no traceback)
    (models / "check" / OOF_FILE).write_bytes(b"not a zip file")
    build_report(caches=[res.path], models_dir=models, out=tmp_path / "rep2")
    li = next(json.loads(p.read_text())["label_issues"] for p in (tmp_path / "rep2" / ".analysis").glob("*.json"))
    assert len(li["checks"]) == 1 and li["not_used"] == ["scratch-cnn fine-tuned (2-fold cross-fit): unreadable "
                                                         "(ValueError)"]  # numpy: not a zip, not an array


def test_a_pipeline_cross_fit_entry_runs_once_and_feeds_the_report(folder, tmp_path):
    from featpipe.pipeline import Study, validate_dict

    from conftest import TINY

    spec = {"data": str(folder), "backbones": [{"name": TINY, "pretrained": False, "image_size": 32}], "heads": [],
            "seed": 0, "report": {"enabled": False},
            "finetune": [{"backbone": "scratch-cnn", "id": "check", "width": 8, "depth": 2, "batch_size": 8,
                          "precision": "fp32", "epochs": 1, "cross_fit": 2}]}
    study = Study(validate_dict(spec, tmp_path), out=tmp_path / "out")
    (step,) = [s for s in study.plan() if s.stage == "finetune"]
    assert step.name == "check (cross-fit)" and step.status != "up to date"
    study.run()
    out = study.models_dir / "finetune-check"
    assert (out / RECORD_FILE).is_file() and not (out / "metrics.json").exists()
    (step,) = [s for s in Study(validate_dict(spec, tmp_path), out=tmp_path / "out").plan() if s.stage == "finetune"]
    assert step.status == "up to date"
