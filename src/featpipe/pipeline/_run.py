"""Planning and running a validated pipeline: which stage is up to date, which will run and why."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featpipe.errors import BackboneError, FeaturepipeError, MissingExtraError, PipelineError
from featpipe.folders import writable_folder
from featpipe.pipeline._load import LoadedPipeline
from featpipe.pipeline._schema import BackboneConfig
from featpipe.runs import RunRecordError, amend_record, read_record

UP_TO_DATE, WILL_RUN, SKIPPED = "up to date", "will run", "skipped"


@dataclass
class Step:
    """One line of the plan."""

    stage: str
    name: str
    status: str
    why: str = ""
    model_dir: Path | None = None  # head and fuse steps: where its model and metrics.json live

    def line(self) -> str:
        return f"  {self.stage:8} {self.name}: {self.status}" + (f" ({self.why})" if self.why else "")


@dataclass
class BackboneRow:
    config: BackboneConfig
    spec: Any = None  # BackboneSpec once resolved
    unavailable: str | None = None
    cache: Path | None = None
    todo: int | None = None  # rows an embed would (re)compute; None: no cache yet
    why: str = ""


@dataclass
class StudyResult:
    caches: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    skipped_heads: list[str] = field(default_factory=list)
    predictions: str | None = None
    report: str | None = None
    tracked: list[str] = field(default_factory=list)  # MLflow run ids, one per fitted head

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def data_fingerprint(cache: Any) -> str:
    """Identifies what a head sees: feature config key + every row's id, split, label, status and bytes."""
    import numpy as np

    h = hashlib.sha256(str(cache.key).encode())
    for arr in (cache.ids, cache.splits, cache.content_hash):
        h.update("\0".join(str(x) for x in arr).encode())
    for arr in (cache.labels, cache.labeled, cache.ok):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def stage_inputs(data_fp: str, head: str, fit: dict[str, Any], params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Everything whose change makes a fitted head stale (stored in its metrics.json under ``stage``)."""
    from featpipe.versions import library_versions

    return {"data": data_fp, "head": head, "fit": fit, "params": params, "seed": seed,
            "versions": library_versions()}


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


def why_stale(metrics_file: Path, inputs: dict[str, Any]) -> str | None:
    """None when ``metrics_file`` was written from the same inputs (and its run's files are the ones it
    names), else what changed."""
    if not metrics_file.is_file():
        return "not fitted yet"
    try:
        old = read_record(metrics_file.parent).get("stage") or {}
    except RunRecordError as e:
        return str(e)
    if old.get("fingerprint") == fingerprint(inputs):
        return None
    before = old.get("inputs") or {}
    if not before:
        return "fitted outside a pipeline (no stage fingerprint)"
    out = []
    for k in ("data", "fit", "params", "seed", "versions"):
        a, b = before.get(k), inputs.get(k)
        if a == b:
            continue
        if k == "data":
            out.append("features or dataset changed")
        elif isinstance(a, dict) and isinstance(b, dict):
            diff = [f"{x}: {a.get(x)!r} -> {b.get(x)!r}" for x in sorted(set(a) | set(b)) if a.get(x) != b.get(x)]
            out.append(f"{k} " + "; ".join(diff[:3]))
        else:
            out.append(f"{k} {a!r} -> {b!r}")
    return ", ".join(out) or "inputs changed"


class Study:
    """A loaded pipeline bound to its folders: :meth:`plan` says what would run, :meth:`run` runs it."""

    def __init__(self, loaded: LoadedPipeline, *, out: str | Path | None = None, skip_unavailable: bool = False,
                 progress: bool = True, echo: Callable[[str], Any] = print, track: str | None = None) -> None:
        self.loaded = loaded
        self.c = loaded.config
        self.out = Path(out or self.c.out or f"runs/{self.c.name}")
        self.cache_dir = Path(self.c.cache_dir) if self.c.cache_dir else self.out / "cache"
        self.models_dir = self.out / "models"
        self.skip_unavailable = skip_unavailable
        self.progress = progress
        self.echo = echo
        self._manifest = None
        self._rows: list[BackboneRow] | None = None
        self.track = track or self.c.track

    # ------------------------------------------------------------------------------- resolution
    def path(self, p: str) -> str:
        """A path from the file: ``~`` expanded, relative ones relative to the pipeline file."""
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (self.loaded.file.parent / q).resolve())

    def manifest(self):
        if self._manifest is None:
            self._manifest = self._load_manifest()
        return self._manifest

    def _load_manifest(self):
        from featpipe.data import HF_PREFIX
        from featpipe.data.config import open_dataset
        from featpipe.data.samples import write_digits

        d = self.c.data
        if d.sample == "digits":
            from featpipe.data import load_dataset

            folder = write_digits(self.out / "data" / "digits", per_class=d.per_class)
            return load_dataset(folder, name=d.name or self.c.name, seed=d.split_seed)
        if not d.path:
            raise self.loaded.error(("data", "path"), "not set: pass --set data.path=DIR (or 'sample: digits')")
        source = d.path if d.path.startswith(HF_PREFIX) else self.path(d.path)
        try:
            return open_dataset(d, source, name=self.c.name, cache_dir=self.cache_dir)
        except FeaturepipeError as e:
            raise self.loaded.error(("data",), str(e)) from None

    def backbones(self) -> list[BackboneRow]:
        """Resolve every backbone (no model built, nothing downloaded) and check its weights are here."""
        if self._rows is not None:
            return self._rows
        from featpipe.backbones import weights_unavailable
        from featpipe.hardware import resolve_device

        rows = []
        device = resolve_device(self.c.device)
        for i, b in enumerate(self.c.backbones):
            row = BackboneRow(b)
            try:
                row.spec = b.spec(seed=self.c.seed, device=device, weights=self.path(b.weights) if b.weights else None)
                row.unavailable = weights_unavailable(row.spec)
            except (BackboneError, MissingExtraError) as e:  # a missing extra: skippable like missing weights
                if str(e).startswith("unknown backbone"):
                    raise self.loaded.error(("backbones", i, "name"), str(e)) from None
                row.unavailable = str(e)
            rows.append(row)
        self._rows = rows
        return rows

    def _label(self, row: BackboneRow) -> str:
        """A backbone's name in messages: its id (or name), or its spec tag when several share it."""
        refs = [b.ref for b in self.c.backbones]
        return row.spec.tag() if refs.count(row.config.ref) > 1 and row.spec is not None else row.config.ref

    def check_names(self) -> None:
        """Every backbone name is known (registry, .onnx file or timm architecture); builds nothing."""
        from featpipe.backbones import PACKAGED_ONNX, is_onnx, split_layer, timm_arch

        for i, b in enumerate(self.c.backbones):
            name = split_layer(b.name)[0]
            if (name in PACKAGED_ONNX or is_onnx(name) or timm_arch(name)
                    or name.startswith("finetuned:")):  # fine-tuned checkpoints: featpipe.finetune
                continue
            raise self.loaded.error(("backbones", i, "name"), f"unknown backbone {b.name!r}: not a featpipe "
                                    "backbone, an .onnx file or a timm model (see `featpipe backbones`)")

    # ------------------------------------------------------------------------------------ plan
    def _embed_state(self, row: BackboneRow) -> None:
        from featpipe.features.cache import find_cache, rows_to_embed

        m = self.manifest()
        row.cache = find_cache(self.cache_dir, m, row.spec) if self.cache_dir.exists() else None
        if row.cache is None:
            row.todo, row.why = len(m), "no cache for this backbone config"
            return
        row.todo, row.why = rows_to_embed(row.cache, m)

    def head_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        from featpipe.heads import head_names

        jobs: dict[str, dict[str, Any]] = {}
        for h in self.c.heads:
            for name in head_names(h.name):
                jobs[name] = dict(h.params)
        return list(jobs.items())

    def _head_inputs(self, data_fp: str, head: str, params: dict[str, Any]) -> dict[str, Any]:
        # refit is always recorded: its default changed (train -> train+val), and heads fitted under the
        # old default must not pass as up to date
        fit = {**self.c.fit.model_dump(exclude_defaults=True), "refit": self.c.fit.refit}
        return stage_inputs(data_fp, head, fit, params, self.c.seed)

    def plan(self) -> list[Step]:
        """What :meth:`run` would do, stage by stage, and why. Reads caches and metrics; writes nothing."""
        from featpipe.features.cache import FeatureCache

        self.check_names()
        steps: list[Step] = []
        rows = self.backbones()
        fps: dict[str, str | None] = {}
        for row in rows:
            ref = self._label(row)
            if row.unavailable:
                status = SKIPPED if self.skip_unavailable else "unavailable"
                steps.append(Step("embed", ref, status, row.unavailable))
                fps[row.config.ref] = None
                continue
            self._embed_state(row)
            fresh = row.cache is not None and row.todo == 0 and not row.why
            shown = ref if ref == row.spec.tag() else f"{ref} -> {row.spec.tag()}"
            steps.append(Step("embed", shown, UP_TO_DATE if fresh else WILL_RUN,
                              "" if fresh else (f"{row.todo} images: {row.why}" if row.todo else row.why)))
            fps[row.config.ref] = fp = data_fingerprint(FeatureCache.open(row.cache)) if fresh else None
            run = row.cache.stem if row.cache else None
            for head, params in self.head_jobs():
                steps.append(self._head_step(ref, run, head, params, fp))
        for group in self.c.fuse:
            label = "+".join(group)
            missing = [r for r in group if fps.get(r) is None]
            unavailable = any(next(r for r in rows if r.config.ref == g).unavailable for g in group)
            fused = None if unavailable or missing else self.fused_cache(group)
            for head, params in self.head_jobs():
                if unavailable:
                    steps.append(Step("fuse", f"{label}/{head}", SKIPPED, "a backbone is unavailable"))
                elif fused is None:
                    steps.append(Step("fuse", f"{label}/{head}", WILL_RUN, f"after embedding {', '.join(missing)}"))
                else:
                    steps.append(self._head_step(label, Path(fused.path).stem, head, params,
                                                 data_fingerprint(fused), stage="fuse"))
        for ft in self.c.finetune:
            out, cfg, inputs = self._finetune_job(ft)
            if ft.cross_fit:
                from featpipe.finetune import cross_fit_done

                done = cross_fit_done(out, self.manifest(), cfg)
                steps.append(Step("finetune", f"{ft.id or ft.backbone} (cross-fit)", UP_TO_DATE if done else WILL_RUN,
                                  "" if done else "no finished cross-fit of this data and config"))
                continue
            why = why_stale(out / "metrics.json", inputs)
            steps.append(Step("finetune", ft.id or ft.backbone, UP_TO_DATE if why is None else WILL_RUN, why or ""))
        if self.c.predict:
            steps.append(self._predict_step(steps))
        if self.c.report.enabled:
            steps.append(Step("report", str(self.out / "report"), WILL_RUN, "incremental: unchanged sections kept"))
        return steps

    def _predict_step(self, steps: list[Step]) -> Step:
        p = self.c.predict
        assert p is not None
        heads = [s for s in steps if s.stage in ("head", "fuse") and s.status != SKIPPED]
        if any(s.status != UP_TO_DATE for s in heads) or self.c.finetune:
            return Step("predict", p.out, WILL_RUN, "after the models it chooses from")
        fitted = [{"dir": s.model_dir, "metrics": read_record(s.model_dir)}
                  for s in heads if s.model_dir is not None]
        try:
            stale = self._predict_stale(self._predict_files(), self.best_model(fitted))
        except PipelineError as e:
            return Step("predict", p.out, "error", str(e))
        return Step("predict", p.out, UP_TO_DATE) if stale is None else Step("predict", p.out, WILL_RUN, stale)

    def _head_step(self, ref: str, run: str | None, head: str, params: dict[str, Any], data_fp: str | None,
                   stage: str = "head") -> Step:
        name = f"{ref}/{head}"
        if data_fp is None or run is None:
            return Step(stage, name, WILL_RUN, "its features are (re)computed first")
        d = self.models_dir / run / head
        why = why_stale(d / "metrics.json", self._head_inputs(data_fp, head, params))
        return Step(stage, name, UP_TO_DATE, model_dir=d) if why is None else Step(stage, name, WILL_RUN, why)

    def fused_cache(self, group: list[str]):
        from featpipe.features.cache import FeatureCache
        from featpipe.features.fuse import FusedCache

        by_ref = {r.config.ref: r for r in self.backbones()}
        return FusedCache([FeatureCache.open(by_ref[g].cache) for g in group], self.cache_dir)

    # ------------------------------------------------------------------------------------- run
    def unavailable_error(self) -> PipelineError | None:
        bad = [(i, r) for i, r in enumerate(self.backbones()) if r.unavailable]
        if not bad or self.skip_unavailable:
            return None
        lines = [f"{self.loaded.where(('backbones', i))}: backbones[{i}] {r.config.ref}: {r.unavailable}"
                 for i, r in bad]
        return PipelineError("weights unavailable offline (pass --skip-unavailable to run without them):\n"
                             + "\n".join(lines))

    def preflight(self, data: bool = True) -> None:
        """Every check a run makes before any work (``run --check`` is this alone): backbone names and
        weights, the dataset (path, split fractions, columns, labels: listed, no image read), the metric
        for its task, the images to predict. ``data=False`` leaves out what needs the dataset."""
        from featpipe.tracking import require_tracker

        self.check_names()
        require_tracker(self.track)
        self.backbones()
        err = self.unavailable_error()
        if err:
            raise err
        if data:
            m = self.manifest()
            if self.c.fit.metric:
                from featpipe.heads.metrics import main_metric_key

                try:
                    main_metric_key(self.c.fit.metric, m.task)
                except FeaturepipeError as e:
                    raise self.loaded.error(("fit", "metric"), str(e)) from None
        if self.c.predict and (data or "{data}" not in self.c.predict.path):
            self._predict_files()  # a missing predict folder stops the run before any work

    def run(self) -> StudyResult:
        """Run every stage that is not up to date; stop before any work on a problem the plan can see."""
        from featpipe.features.embed import embed_datasets

        self.preflight()
        rows = self.backbones()
        m = self.manifest()
        for row in rows:  # said up front, before any work
            if row.unavailable:
                self.echo(f"{row.config.ref}: skipped ({row.unavailable})")
        writable_folder(self.out, "output")
        counts = ", ".join(f"{k} {v}" for k, v in m.split_counts().items())
        self.echo(f"dataset {m.name}: {len(m)} images ({counts}), {m.task}, {len(m.classes)} classes")
        if m.skipped:
            self.echo(f"  skipped {len(m.skipped)} listed entries (e.g. {m.skipped[0][0]}: {m.skipped[0][1]})")
        if m.split_summary():
            self.echo(f"  {m.split_summary()}")
        res = StudyResult()
        fitted: list[dict[str, Any]] = []
        pending: list[BackboneRow] = []
        for row in rows:
            if row.unavailable:
                continue
            self._embed_state(row)
            if row.cache is not None and row.todo == 0 and not row.why:  # no backbone is even built
                self.echo(f"{row.spec.tag()}: up to date ({len(m)} rows) -> {row.cache}")
            else:
                pending.append(row)
        if pending:  # one pass over the images feeds every backbone that needs it (each image decoded once)
            e = self.c.embed
            own = next((row.config.batch_size for row in pending if row.config.batch_size), None)
            results = embed_datasets(m, [row.spec for row in pending],
                                     e.model_copy(update={"batch_size": own}) if own else e,
                                     cache_dir=self.cache_dir, progress=self.progress, device=self.c.device,
                                     seed=self.c.seed)
            for row, r in zip(pending, results, strict=True):
                self.echo(f"{row.spec.tag()}: embedded {r.n_computed}, reused {r.n_reused}, "
                          f"failed {r.n_failed} -> {r.path}")
                if r.n_damaged:
                    self.echo(f"  {r.n_damaged} rows failed their checksum (the cache file was damaged): embedded again")
                for img_id, reason in r.failures[:3]:
                    self.echo(f"  failed: {img_id}: {reason}")
                row.cache = r.path
        for row in rows:
            if row.unavailable:
                continue
            res.caches.append(str(row.cache))
            fitted += self._fit_all(self._open(row.cache), self._label(row), res)
        for group in self.c.fuse:
            by_ref = {r.config.ref: r for r in rows}
            if any(by_ref[g].unavailable for g in group):
                self.echo(f"fuse {'+'.join(group)}: skipped (a backbone is unavailable)")
                continue
            fused = self.fused_cache(group)
            if fused.n_dropped:
                self.echo(f"fuse {'+'.join(group)}: {fused.n_dropped} rows not embedded by every backbone left out")
            fitted += self._fit_all(fused, "+".join(group), res)
        for ft in self.c.finetune:
            if ft.cross_fit:  # out-of-fold probabilities for the report's label check: no model, no run
                from featpipe.finetune import cross_fit

                out, cfg, _ = self._finetune_job(ft)
                cross_fit(self.manifest(), cfg, out, progress=self.progress, log=self.echo)
                continue
            out, metrics = self._run_finetune(ft)
            res.models.append(str(out))
            fitted.append({"dir": out, "metrics": metrics})
        if fitted:
            from featpipe.heads.metrics import format_table

            self.echo(format_table([f["metrics"] for f in fitted]))
        if self.c.predict:
            res.predictions = self._predict(fitted)
        if self.c.report.enabled:
            from featpipe.reporting import LABEL_ISSUES_CSV, build_report, count_label_issues

            index = build_report(caches=res.caches, models_dir=self.models_dir, out=self.out / "report",
                                 human_baseline=self.c.report.human_baseline)
            self.echo(f"report: {index}")
            n = count_label_issues(index.parent)
            if n is not None:
                self.echo(f"  {LABEL_ISSUES_CSV}: {n} flagged image{'' if n == 1 else 's'}")
            res.report = str(index)
        if self.track and fitted:
            from featpipe.tracking import track_runs

            for t in track_runs([f["dir"] for f in fitted], self.track, experiment=self.c.experiment,
                                study=self.c.name, report=Path(res.report).parent if res.report else None):
                self.echo(t.line())
                res.tracked.append(t.run_id)
        return res

    def _open(self, path: Path):
        from featpipe.runs.fit import open_cache

        cache = open_cache(path, self.c.fit.max_memory)
        if not cache.in_memory:
            self.echo(f"{Path(path).name}: features exceed the memory budget: fitting out of core")
        return cache

    def _fit_all(self, cache: Any, ref: str, res: StudyResult) -> list[dict[str, Any]]:
        from featpipe.runs.fit import fit_cache, write_run

        data_fp = data_fingerprint(cache)
        run_name = Path(cache.path).stem
        done = []
        for head, params in self.head_jobs():
            inputs = self._head_inputs(data_fp, head, params)
            d = self.models_dir / run_name / head
            why = why_stale(d / "metrics.json", inputs)
            if why is None:
                res.skipped_heads.append(str(d))
                self.echo(f"{ref}/{head}: up to date")
                done.append({"dir": d, "metrics": read_record(d)})
                continue
            self.echo(f"{ref}/{head}: fitting ({why})")
            for run in fit_cache(cache, head, self.c.fit, seed=self.c.seed,
                                 head_params={head: params} if params else None):
                run.metrics["stage"] = {"fingerprint": fingerprint(inputs), "inputs": inputs}
                for note in (run.metrics["selection"].get(k) for k in ("auto_cv", "refit_note")):
                    if note:
                        self.echo(f"  {ref}/{run.head}: {note}")
                res.models.append(str(write_run(run, self.models_dir)))
                done.append({"dir": d, "metrics": run.metrics})
        return done

    def _finetune_job(self, ft: Any) -> tuple[Path, Any, dict[str, Any]]:
        """(run folder in the models folder, FinetuneConfig, stage inputs) of one ``finetune:`` entry."""
        from featpipe.features.cache import slug
        from featpipe.versions import library_versions

        # the entry is the fine-tune config; what the study sets once (metric, seed, device, caches) is added
        cfg = ft.model_copy(update={"weights": self.path(ft.weights) if ft.weights else None,
                                    "metric": self.c.fit.metric, "seed": self.c.seed, "device": self.c.device,
                                    "cache_dir": str(self.cache_dir)})
        out = self.models_dir / f"finetune-{slug(ft.id or ft.backbone)}"
        inputs = {"dataset": self.manifest().fingerprint(), "config": cfg.to_dict(), "versions": library_versions()}
        return out, cfg, inputs

    def _run_finetune(self, ft: Any) -> tuple[Path, dict[str, Any]]:
        """Run (or resume) one fine-tune entry; skipped when its metrics.json holds the same inputs."""
        from featpipe.finetune import finetune

        out, cfg, inputs = self._finetune_job(ft)
        name = ft.id or ft.backbone
        why = why_stale(out / "metrics.json", inputs)
        if why is None:
            self.echo(f"finetune {name}: up to date -> {out}")
            return out, json.loads((out / "metrics.json").read_text())
        self.echo(f"finetune {name}: training ({why}) -> {out}")
        resume = (out / "last.pt").exists() and why_stale(out / "stage.json", inputs) is None
        (out).mkdir(parents=True, exist_ok=True)
        (out / "stage.json").write_text(json.dumps({"stage": {"fingerprint": fingerprint(inputs),
                                                              "inputs": inputs}}, default=str))
        finetune(self.manifest(), cfg, out, resume=resume, force=not resume, progress=self.progress,
                 log=self.echo)
        metrics = amend_record(out, stage={"fingerprint": fingerprint(inputs), "inputs": inputs})
        return out, metrics

    # --------------------------------------------------------------------------------- predict
    def _predict_files(self) -> list[str]:
        from featpipe.heads.model import expand_image_paths

        p = self.c.predict
        assert p is not None
        src = self.path(p.path.replace("{data}", self.path(self.c.data.path or ".")))
        if not Path(src).exists():
            raise self.loaded.error(("predict", "path"), f"not found: {src}")
        files = expand_image_paths(src)
        if not files:
            raise self.loaded.error(("predict", "path"), f"no image files in {src}")
        return files

    def best_model(self, fitted: list[dict[str, Any]]) -> Path:
        p = self.c.predict
        assert p is not None
        if p.model != "best":
            path = self.models_dir / p.model / "model.joblib"
            if not path.is_file():
                raise self.loaded.error(("predict", "model"), f"no model at {path}")
            return path
        if not fitted:
            raise self.loaded.error(("predict",), "no fitted model to predict with")
        best = max(fitted, key=lambda f: f["metrics"]["scores"]["val"]["main"])
        return Path(best["dir"]) / "model.joblib"

    @staticmethod
    def _predict_fingerprint(files: list[str], model_path: Path) -> str:
        import os

        from featpipe.checksum import sha256_file

        return fingerprint({"model": sha256_file(model_path),
                            "files": [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]})

    def _predict_stale(self, files: list[str], model_path: Path) -> str | None:
        """None when the CSV was written by this model from these images, else why not."""
        p = self.c.predict
        assert p is not None
        out_csv = self.out / p.out
        side = out_csv.with_name(out_csv.name + ".stage.json")
        if not (out_csv.is_file() and side.is_file()):
            return "not written yet"
        try:
            old = json.loads(side.read_text())
        except ValueError:
            return "its stage file is unreadable"
        if old.get("fingerprint") == self._predict_fingerprint(files, model_path):
            return None
        return "another best model" if old.get("model") != str(model_path) else "the model or the images changed"

    def _predict(self, fitted: list[dict[str, Any]]) -> str:
        from featpipe.bundle.io import load_model
        from featpipe.runs.predictions import predict_to_csv

        p = self.c.predict
        assert p is not None
        files = self._predict_files()
        model_path = self.best_model(fitted)
        out_csv = self.out / p.out
        if self._predict_stale(files, model_path) is None:
            self.echo(f"predict: up to date ({out_csv})")
            return str(out_csv)
        model = load_model(model_path)
        model.embed_device = self.c.device
        n_bad = predict_to_csv(model, files, out_csv)
        side = out_csv.with_name(out_csv.name + ".stage.json")
        side.write_text(json.dumps({"fingerprint": self._predict_fingerprint(files, model_path),
                                    "model": str(model_path)}) + "\n")
        self.echo(f"predict: {len(files)} images with {model_path.parent.relative_to(self.models_dir)} "
                  f"-> {out_csv} ({n_bad} unreadable)")
        return str(out_csv)
