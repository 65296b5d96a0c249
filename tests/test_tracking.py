"""`--track mlflow`: each fitted head is one MLflow run in a real local store (sqlite, or a real `mlflow server`),
read back with MlflowClient; re-runs log nothing new; the logged model predicts what the bundle predicts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from featpipe.bundle.io import load_model
from featpipe.cli import main
from featpipe.runs import read_record

from conftest import SMALL, TINY, TINY_SIZE, make_class_folders

mlflow = pytest.importorskip("mlflow")  # the [track] extra, part of [test]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _runs(experiment: str) -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _test_paths(folder: Path) -> list[str]:
    z = np.load(folder / "predictions.npz")
    return [str(p) for p, s in zip(z["paths"], z["split"], strict=True) if s == "test"]


def _logged_model(run) -> object:
    return mlflow.pyfunc.load_model(run.data.tags["featpipe.model_uri"])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """fit-head --track mlflow on a tiny-backbone cache, into a sqlite store in its own folder (MLflow's
    default artifact root is relative to the working folder, so the tests run there)."""
    root = tmp_path_factory.mktemp("track")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        make_class_folders(root / "shapes", {"red": 10, "green": 10, "blue": 10})
        r = _invoke("embed", "--data", root / "shapes", "--backbone", TINY, "--no-pretrained", "--image-size", TINY_SIZE,
                    "--cache-dir", "cache", "-q")
        assert r.exit_code == 0, r.output
        (cache,) = (root / "cache").glob("*.h5")
        fit = ("fit-head", "--cache", cache, "--head", "logistic", "--head", "lgbm", "--bootstrap", 100,
               "--out", "models", "--track", "mlflow")
        r = _invoke(*fit)
        assert r.exit_code == 0, r.output
        yield {"root": root, "cache": cache, "fit": fit, "output": r.output, "folders": sorted(root.glob("models/*/*/"))}


def _fit_logistic(tracked, out, *extra):
    return _invoke("fit-head", "--cache", tracked["cache"], "--head", "logistic", "--bootstrap", 100, "--out", out,
                   "--track", "mlflow", *extra)


@pytest.mark.slow
def test_one_run_per_head_with_the_record_params_metrics_tags_and_artifacts(tracked, tmp_path):
    runs = _runs("shapes")  # the experiment is named after the dataset
    assert sorted(r.data.tags["featpipe.head"] for r in runs) == ["lgbm", "logistic"], tracked["output"]
    client = mlflow.MlflowClient()
    for folder in tracked["folders"]:
        record = read_record(folder)
        (run,) = [r for r in runs if r.data.tags["featpipe.head"] == folder.name]
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        assert p["metric"] == "accuracy" and p["head"] == folder.name and p["seed"] == "0"
        assert p["backbone.name"] == TINY and p["backbone.weights"] == "random" and p["backbone.image_size"] == "32"
        assert p["dataset"] == "shapes" and p["split_seed"] == "0" and p["bootstrap.n_resamples"] == "100"
        for k, v in record["params"].items():  # the chosen hyper-parameters
            assert p[f"params.{k}"] == (v if isinstance(v, str) else json.dumps(v))
        for split in ("train", "val", "test"):
            assert m[f"{split}_main"] == pytest.approx(record["scores"][split]["main"])
            assert m[f"{split}_accuracy"] == pytest.approx(record["scores"][split]["accuracy"])
        lo, hi = record["scores"]["test"]["main_ci"]
        assert (m["test_main_ci_low"], m["test_main_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert m["fit_seconds"] == pytest.approx(record["fit_seconds"])
        assert t["featpipe.cache_key"] == record["cache"]["key"] and t["featpipe.version"] == record["featpipe_version"]
        assert t["featpipe.fingerprint"] == "model:" + record["record"]["files"]["model.joblib"]
        assert run.info.status == "FINISHED"
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "predictions.npz"} <= names, names
        got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="metrics.json",
                                                  dst_path=str(tmp_path / folder.name))
        assert Path(got).read_bytes() == (folder / "metrics.json").read_bytes()


@pytest.mark.slow
def test_logged_model_predicts_the_bundles_labels_on_image_paths(tracked, monkeypatch):
    monkeypatch.chdir(tracked["root"])
    (run,) = [r for r in _runs("shapes") if r.data.tags["featpipe.head"] == "logistic"]
    folder = next(f for f in tracked["folders"] if f.name == "logistic")
    paths = _test_paths(folder)
    bad = tracked["root"] / "broken.png"
    bad.write_bytes(b"not an image")
    paths.append(str(bad))
    want = load_model(folder / "model.joblib").predict_labels(paths)
    assert want[-1] is None and len(set(want[:-1])) > 1  # an unreadable image, and more than one class
    logged = _logged_model(run)
    import pandas as pd

    def labels(frame) -> list:  # a missing label (an unreadable image) as None
        return [None if pd.isna(x) else x for x in frame["label"]]

    out = logged.predict(pd.DataFrame({"path": paths}))
    assert labels(out) == want and list(out["path"]) == paths
    assert out["error"].iloc[-1] and out["error"].iloc[:-1].isna().all()
    assert labels(logged.predict(paths)) == want  # a plain list of paths too


@pytest.mark.slow
def test_logging_the_same_runs_again_logs_nothing_new_and_a_new_fit_logs_anew(tracked, monkeypatch):
    from featpipe.tracking import track_runs

    monkeypatch.chdir(tracked["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracked['root'] / 'mlflow.db'}")
    before = {r.info.run_id for r in _runs("shapes")}
    again = track_runs(tracked["folders"])  # the same run folders: found by their fingerprint tag
    assert [t.logged for t in again] == [False, False] and {t.run_id for t in again} == before
    assert {r.info.run_id for r in _runs("shapes")} == before
    r = _fit_logistic(tracked, tracked["root"] / "seed1", "--seed", 1)  # another seed: another model, logged
    assert r.exit_code == 0 and r.output.count("mlflow: logged") == 1, r.output
    assert len(_runs("shapes")) == len(before) + 1


@pytest.mark.slow
def test_pipeline_logs_each_head_and_finetune_under_the_study_with_its_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    make_class_folders(tmp_path / "data", {"red": 12, "green": 12, "blue": 12}, size=16)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "colours", "data": "data", "seed": 2, "out": str(tmp_path / "out"), "heads": ["logistic"],
        "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}], "fit": {"bootstrap": 100},
        "finetune": [{**{k: v for k, v in SMALL.items() if k != "label_smoothing"}, "epochs": 2}],
        "track": "mlflow",
    }))
    r = _invoke("run", tmp_path / "study.yaml", "-q")
    assert r.exit_code == 0, r.output
    runs = _runs("colours")
    assert sorted(x.data.tags["featpipe.head"] for x in runs) == ["finetune-ft", "logistic"], r.output
    client = mlflow.MlflowClient()
    for run in runs:
        assert run.data.tags["featpipe.fingerprint"].startswith("stage:")
        names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        assert "report/index.html" in names, names
    (ft,) = [x for x in runs if x.data.tags["featpipe.head"] == "finetune-ft"]
    curve = client.get_metric_history(ft.info.run_id, "epoch_train_loss")
    assert sorted(m.step for m in curve) == [1, 2]
    history = json.loads((tmp_path / "out" / "models" / "finetune-scratch-cnn" / "history.json").read_text())
    assert [m.value for m in sorted(curve, key=lambda m: m.step)] == pytest.approx(
        [e["train_loss"] for e in history["epochs"]])
    # the fine-tuned checkpoint travels with the logged model: it predicts what the bundle predicts
    folder = tmp_path / "out" / "models" / "finetune-scratch-cnn"
    paths = _test_paths(folder)
    want = load_model(folder / "model.joblib").predict_labels(paths)
    assert list(_logged_model(ft).predict(paths)["label"]) == want
    r = _invoke("run", tmp_path / "study.yaml", "-q")  # unchanged study: nothing new
    assert r.exit_code == 0 and r.output.count("mlflow: already logged") == 2, r.output
    assert len(_runs("colours")) == 2


def test_pipeline_track_key_is_checked_before_any_work(tmp_path):
    make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "data": "data", "backbones": [{"name": TINY, "pretrained": False}], "track": "wandb",
        "out": str(tmp_path / "out")}))
    r = _invoke("run", tmp_path / "study.yaml")
    assert r.exit_code == 2 and "track" in r.output and "mlflow" in r.output, r.output
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_logs_to_a_real_mlflow_server_and_a_stopped_one_is_one_line(tracked, tmp_path, monkeypatch):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts")], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start (exit {server.poll()})")
                time.sleep(0.5)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "served")
        r = _fit_logistic(tracked, tmp_path / "models")
        assert r.exit_code == 0, r.output
        (run,) = _runs("served")
        (folder,) = (tmp_path / "models").glob("*/logistic")
        assert run.data.metrics["test_main"] == pytest.approx(read_record(folder)["scores"]["test"]["main"])
        assert list((tmp_path / "artifacts").rglob("metrics.json"))  # the artifacts went through the server
        paths = _test_paths(folder)
        assert list(_logged_model(run).predict(paths)["label"]) == load_model(folder / "model.joblib").predict_labels(paths)
    finally:
        server.terminate()
        server.wait(timeout=60)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    r = _fit_logistic(tracked, tmp_path / "models")
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: mlflow at http://127.0.0.1") and "run again to log them" in last, r.output
    assert "Traceback" not in r.output
