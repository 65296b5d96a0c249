"""One run folder -> one MLflow run: params, metrics, tags and artifacts from its record, the bundle as a model."""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from featpipe.checksum import sha256_file
from featpipe.runs import RECORD_FILE, read_record
from featpipe.tracking._common import TrackedRun, TrackingError
from featpipe.tracking._pyfunc import BUNDLE_ARTIFACT

FINGERPRINT_TAG = "featpipe.fingerprint"
HISTORY_FILE = "history.json"  # a fine-tune's per-epoch rows
MODEL_CODE = Path(__file__).with_name("_pyfunc_model.py")
_LOCAL_PATHS = {"weights_path", "path"}  # this machine's paths stay out of params (the cache path is a tag)


def run_fingerprint(record: dict[str, Any], folder: Path) -> str:
    """What identifies a run's result: its pipeline stage fingerprint, else the sha256 of its model."""
    stage = (record.get("stage") or {}).get("fingerprint")
    if stage:
        return f"stage:{stage}"
    model = ((record.get("record") or {}).get("files") or {}).get("model.joblib")
    return f"model:{model or sha256_file(folder / 'model.joblib')}"


def experiment_name(record: dict[str, Any], experiment: str | None, study: str | None = None) -> str:
    """The given experiment, else MLflow's ``MLFLOW_EXPERIMENT_NAME``, else the study's or the dataset's name."""
    import os

    dataset = ((record.get("cache") or {}).get("dataset") or {}).get("name")
    return (experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or study
            or str(dataset or record.get("run") or "featpipe"))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flat(prefix: str, d: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(f"{prefix}.{k}", v)
        elif k not in _LOCAL_PATHS:
            yield f"{prefix}.{k}", v


def _text(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s[:MAX_PARAM_VAL_LENGTH]


def record_params(record: dict[str, Any]) -> dict[str, str]:
    """Backbone spec, chosen head params, selection metric, seeds and fit options of a run record."""
    cache = record.get("cache") or {}
    dataset = cache.get("dataset") or {}
    boot = record.get("bootstrap") or {}
    p: dict[str, Any] = {
        "head": record.get("head"), "head_type": record.get("head_type"), "task": record.get("task"),
        "metric": record.get("metric"), "classes": record.get("classes"), "refit": record.get("refit"),
        "preprocess": record.get("preprocess"), "class_weight": record.get("class_weight"),
        "seed": record.get("seed"), "bootstrap.seed": boot.get("seed"), "bootstrap.n_resamples": boot.get("n_resamples"),
        "dataset": dataset.get("name"), "split_seed": dataset.get("split_seed"),
        "split_fractions": dataset.get("split_fractions"), "feature_dim": cache.get("feature_dim"),
        "out_of_core": record.get("out_of_core"),
    }
    p.update(_flat("backbone", cache.get("backbone") or {}))
    p.update(_flat("params", record.get("params") or {}))
    return {k: _text(v) for k, v in p.items() if v is not None}


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Every split's scores (``<split>_main`` is the selection metric), the test interval, seconds and gap."""
    out: dict[str, float] = {}
    scores = record.get("scores") or {}
    for split in ("train", "val", "test"):
        s = scores.get(split) or {}
        for k, v in s.items():
            if _number(v):
                out[f"{split}_{k}"] = float(v)
    ci = (scores.get("test") or {}).get("main_ci")
    if ci and all(_number(v) for v in ci):
        out["test_main_ci_low"], out["test_main_ci_high"] = float(ci[0]), float(ci[1])
    for k, v in (("fit_seconds", record.get("fit_seconds")), ("gap", record.get("gap")),
                 ("embed_seconds", (record.get("cache") or {}).get("embed_seconds"))):
        if _number(v):
            out[k] = float(v)
    return out


def epoch_metrics(history: dict[str, Any]) -> list[tuple[str, float, int]]:
    """A fine-tune's per-epoch numbers as ``(epoch_<name>, value, epoch)``; ``val_metric`` is named by its metric."""
    metric = history.get("metric") or "metric"
    out = []
    for row in history.get("epochs") or []:
        for k, v in row.items():
            if k != "epoch" and _number(v):
                out.append((f"epoch_{'val_' + metric if k == 'val_metric' else k}", float(v), int(row["epoch"])))
    return out


def record_tags(record: dict[str, Any], folder: Path) -> dict[str, str]:
    cache = record.get("cache") or {}
    tags = {"featpipe.version": record.get("featpipe_version"), "featpipe.cache_key": cache.get("key"),
            "featpipe.train_fingerprint": record.get("train_fingerprint"), "featpipe.run": record.get("run"),
            "featpipe.head": record.get("head"), "featpipe.folder": str(folder.resolve()),
            "featpipe.cache_path": cache.get("path"), "featpipe.created": record.get("created")}
    return {k: str(v) for k, v in tags.items() if v is not None}


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _requirements() -> list[str]:
    """The logged model's environment: featpipe and the libraries that change its predictions, as installed."""
    from importlib.metadata import version

    from featpipe.versions import library_versions

    libs = {**{k: v for k, v in library_versions().items() if k != "python"},
            "mlflow": version("mlflow"), "pandas": version("pandas")}
    return [f"{k}=={str(v).split('+')[0]}" for k, v in libs.items()]  # "2.14.1+cu130": the release PyPI has


def log_run(folder: Path, *, experiment: str | None, study: str | None, report: Path | None) -> TrackedRun:
    """Log ``folder`` unless a run with its fingerprint is in the experiment already."""
    record = read_record(folder)  # verified: the files logged are the ones the record names
    fp = run_fingerprint(record, folder)
    name = experiment_name(record, experiment, study)
    client = MlflowClient()
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage != "active":
            raise TrackingError(f"mlflow experiment {name!r} is deleted: restore it, or log to another one")
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        found = client.search_runs([exp_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fp}'", max_results=1)
        if found:
            return TrackedRun(folder, name, found[0].info.run_id, logged=False)
        run_id = _log(client, exp_id, folder, record, fp, report)
    except MlflowException as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TrackingError(f"mlflow at {mlflow.get_tracking_uri()}: {first} (the runs on disk are kept; run "
                            "again to log them)") from None
    return TrackedRun(folder, name, run_id, logged=True)


def _log(client: MlflowClient, exp_id: str, folder: Path, record: dict[str, Any], fp: str,
         report: Path | None) -> str:
    from featpipe.bundle.export import export_model

    with mlflow.start_run(experiment_id=exp_id, run_name=f"{record.get('run')}/{record.get('head')}") as run:
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in record_params(record).items()]
        tags = [RunTag(k, v) for k, v in record_tags(record, folder).items()]
        for batch in _batches(params, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=batch)
        for batch in _batches(tags, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=batch)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in record_metrics(record).items()]
        history = folder / HISTORY_FILE
        if history.is_file():
            metrics += [Metric(k, v, now, step) for k, v, step in epoch_metrics(json.loads(history.read_text()))]
            client.log_artifact(run_id, str(history))
        for batch in _batches(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=batch)
        for f in (RECORD_FILE, "predictions.npz"):
            if (folder / f).is_file():
                client.log_artifact(run_id, str(folder / f))
        if report is not None and report.is_dir():
            for p in sorted(report.iterdir()):
                if p.name.startswith("."):  # the report's own analysis cache
                    continue
                if p.is_dir():
                    client.log_artifacts(run_id, str(p), f"report/{p.name}")
                else:
                    client.log_artifact(run_id, str(p), "report")
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / BUNDLE_ARTIFACT  # weights copied in: the logged model predicts on any machine
            export_model(folder / "model.joblib", bundle, "joblib", self_contained=True)
            with warnings.catch_warnings():  # an input example would be an image path of this machine
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                               artifacts={BUNDLE_ARTIFACT: str(bundle)},
                                               pip_requirements=_requirements())
        client.set_tag(run_id, "featpipe.model_uri", info.model_uri)
        client.set_tag(run_id, FINGERPRINT_TAG, fp)  # last: a run that failed half-way is logged again
    return run_id
