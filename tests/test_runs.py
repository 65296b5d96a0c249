"""The run record: one writer, one reader; a kill or a swapped file never yields a mixed run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from featpipe.checksum import sha256_file
from featpipe.cli import main
from featpipe.reporting._data import find_model_runs
from featpipe.runs import read_record, run_problem

from conftest import TINY, TINY_SIZE, make_class_folders

ENV = {**os.environ, "FEATPIPE_OFFLINE": "1", "FEATPIPE_CPU_BF16": "0"}


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _pipeline(tmp_path: Path) -> Path:
    make_class_folders(tmp_path / "data", {"red": 10, "green": 10, "blue": 10})
    pipe = tmp_path / "study.yaml"
    pipe.write_text(yaml.safe_dump({
        "name": "colours", "data": "data", "seed": 1, "out": str(tmp_path / "out"), "heads": ["logistic"],
        "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}],
    }))
    return pipe


def _run_dir(tmp_path: Path) -> Path:
    return next((tmp_path / "out" / "models").rglob("metrics.json")).parent


def test_the_record_names_every_file_of_the_run_by_hash(tmp_path):
    assert _invoke("run", _pipeline(tmp_path), "-q").exit_code == 0
    d = _run_dir(tmp_path)
    rec = read_record(d)
    assert rec["record"]["schema"] == 2
    assert rec["record"]["files"] == {n: sha256_file(d / n) for n in ("model.joblib", "predictions.npz")}


def test_a_truncated_file_is_refitted_by_run_and_left_out_by_report(tmp_path):
    pipe = _pipeline(tmp_path)
    assert _invoke("run", pipe, "-q").exit_code == 0
    d = _run_dir(tmp_path)
    (d / "predictions.npz").write_bytes(b"")  # what a kill during the write left
    assert "predictions.npz does not match its run record" in run_problem(d)
    r = _invoke("report", "--models", tmp_path / "out" / "models", "--out", tmp_path / "rep")
    assert r.exit_code == 2 and "predictions.npz does not match its run record" in r.output  # not "Aborted!"
    r = _invoke("report", "--models", tmp_path / "out" / "models", "--cache-dir", tmp_path / "out" / "cache",
                "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert "does not match its run record" in (tmp_path / "rep" / "index.html").read_text()
    r = _invoke("run", pipe, "--dry-run")
    assert "will run" in r.output and "predictions.npz does not match" in r.output, r.output
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0, r.output
    assert run_problem(d) is None


def test_a_model_swapped_in_from_another_run_is_refused(tmp_path):
    pipe = _pipeline(tmp_path)
    assert _invoke("run", pipe, "-q").exit_code == 0
    d = _run_dir(tmp_path)
    other = tmp_path / "other"
    assert _invoke("run", pipe, "-q", "--set", "seed=2", "--set", f"out={other}").exit_code == 0
    od = next((other / "models").rglob("metrics.json")).parent
    for name in ("model.joblib", "model.joblib.sha256"):  # a self-consistent bundle, another run's
        shutil.copy(od / name, d / name)
    img = next((tmp_path / "data" / "red").iterdir())
    r = _invoke("predict", "--model", d / "model.joblib", img)
    assert r.exit_code == 2 and "is not the model its run record" in r.output and "Traceback" not in r.output
    shutil.copy(od / "model.joblib", tmp_path / "alone.joblib")  # loaded alone: its sidecar is the check
    shutil.copy(od / "model.joblib.sha256", tmp_path / "alone.joblib.sha256")
    assert _invoke("predict", "--model", tmp_path / "alone.joblib", img).exit_code == 0


def test_kill_between_the_files_leaves_no_run_and_the_rerun_finishes(tmp_path):
    pipe = _pipeline(tmp_path)
    assert _invoke("run", pipe, "-q").exit_code == 0
    d = _run_dir(tmp_path)
    before = json.loads((d / "metrics.json").read_text())
    # kill -9 once model.joblib of the new fit is written, before predictions.npz
    code = ("import os, signal, sys, numpy; "
            "numpy.savez_compressed = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
            "from featpipe.cli import main; sys.argv = ['featpipe'] + sys.argv[1:]; main()")
    p = subprocess.run([sys.executable, "-c", code, "run", str(pipe), "-q", "--set", "fit.preprocess=l2"],
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    assert not (d / "metrics.json").exists()  # the old record went first: no mix of old and new files
    assert sha256_file(d / "model.joblib") != before["record"]["files"]["model.joblib"]
    r = _invoke("report", "--models", tmp_path / "out" / "models", "--cache-dir", tmp_path / "out" / "cache",
                "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert find_model_runs(tmp_path / "out" / "models") == ([], [])  # a folder without a record is no run
    r = _invoke("run", pipe, "-q", "--set", "fit.preprocess=l2")
    assert r.exit_code == 0, r.output
    assert run_problem(d) is None and read_record(d)["preprocess"] == "l2"


def test_fit_head_fits_every_head_it_is_given(image_folder, tmp_path):
    r = _invoke("embed", "--data", image_folder, "--backbone", TINY, "--no-pretrained", "--image-size", TINY_SIZE,
                "--cache-dir", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    (cache,) = (tmp_path / "c").glob("*.h5")
    r = _invoke("fit-head", "--cache", cache, "--head", "logistic", "--head", "lgbm", "--head", "logistic",
                "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert sorted(p.parent.name for p in (tmp_path / "m").rglob("metrics.json")) == ["lgbm", "logistic"]


@pytest.mark.slow
def test_every_kind_of_run_writes_the_same_typed_record(tmp_path, one_thread):
    """fit-head and finetune hand their fields to one writer: the same set of keys, checked by RunRecord;
    a record missing one is refused before any file is touched."""
    from featpipe.runs import RunRecord, RunRecordError, amend_record, write_run_files

    from conftest import SMALL

    pipe = tmp_path / "study.yaml"
    make_class_folders(tmp_path / "data", {"red": 12, "green": 12})
    pipe.write_text(yaml.safe_dump({
        "name": "colours", "data": "data", "seed": 1, "out": str(tmp_path / "out"), "heads": ["logistic"],
        "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}],
        "finetune": [{**{k: v for k, v in SMALL.items() if k != "label_smoothing"}, "epochs": 1, "image_size": 16}],
    }))
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0, r.output
    records = [read_record(p.parent) for p in (tmp_path / "out").rglob("metrics.json")]
    kinds = {rec["head"].split("-")[0]: rec for rec in records}
    assert {"logistic", "finetune"} <= set(kinds), [rec["head"] for rec in records]
    required = {n for n, f in RunRecord.model_fields.items() if f.is_required()}
    for rec in kinds.values():
        assert required <= set(rec), required - set(rec)
        RunRecord.model_validate(rec)
        assert rec["stage"]["fingerprint"]  # the pipeline's stage, added through the writer
    assert set(kinds["logistic"]) - {"finetune"} == set(kinds["finetune"]) - {"finetune"}
    ft_dir = next(p.parent for p in (tmp_path / "out").rglob("metrics.json") if "finetune" in read_record(p.parent))
    assert run_problem(ft_dir) is None  # amended atomically, its files still match
    incomplete = {k: v for k, v in kinds["logistic"].items() if k not in ("gap_definition", "record")}
    with pytest.raises(RunRecordError, match="gap_definition"):
        write_run_files(tmp_path / "bad", incomplete, {})
    assert not (tmp_path / "bad").exists()
    amend_record(ft_dir, stage={"fingerprint": "x", "inputs": {}})
    assert read_record(ft_dir)["stage"]["fingerprint"] == "x"
