"""Whole studies: validated pipeline files, --set, --check, --dry-run, up-to-date skipping, predict, fuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from featpipe.cli import main
from featpipe.data.samples import write_digits
from featpipe.errors import PipelineError
from featpipe.pipeline import load_pipeline, parse_key, readme_with_schema

from conftest import TINY, TINY_SIZE, make_class_folders

REPO = Path(__file__).resolve().parents[1]
TINY_BACKBONE = {"name": TINY, "pretrained": False, "image_size": TINY_SIZE}


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _study(tmp_path: Path, **extra) -> Path:
    make_class_folders(tmp_path / "data", {"red": 14, "green": 14, "blue": 14})
    cfg = {
        "name": "colours",
        "data": "data",  # relative to the pipeline file
        "backbones": [TINY_BACKBONE],
        "heads": ["logistic"],
        "fit": {"metric": "accuracy"},
        "seed": 3,
        "out": str(tmp_path / "out"),
        **extra,
    }
    pipe = tmp_path / "study.yaml"
    pipe.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return pipe


def _mtimes(models: Path) -> dict[str, int]:
    return {str(p.relative_to(models)): p.stat().st_mtime_ns for p in models.rglob("metrics.json")}


def test_run_pipeline_embeds_fits_and_reports(tmp_path: Path):
    pipe = _study(tmp_path)
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0, r.output
    caches = list((tmp_path / "out" / "cache").glob("colours__*.h5"))
    assert len(caches) == 1
    metrics = json.loads(next((tmp_path / "out" / "models").rglob("metrics.json")).read_text())
    assert metrics["head"] == "logistic" and metrics["seed"] == 3
    assert metrics["scores"]["test"]["accuracy"] > 0.8  # colour classes are easy even for random weights
    assert metrics["stage"]["inputs"]["seed"] == 3 and metrics["stage"]["fingerprint"]
    assert (tmp_path / "out" / "report" / "index.html").exists()
    r = _invoke("run", pipe, "-q")  # a second run reuses the cache and the fitted head
    assert r.exit_code == 0 and "test_efficientnet-random-32px: up to date (42 rows)" in r.output
    assert "logistic: up to date" in r.output


# ------------------------------------------------------------------------------------- validation


def test_typo_key_stops_before_any_work_with_line_and_suggestion(tmp_path: Path):
    pipe = tmp_path / "x.yaml"
    pipe.write_text("name: x\ndata: data\nbackbones: [efficientnet_lite0]\nheads: [logistic]\n"
                    f"out: {tmp_path / 'out'}\nfit:\n  metrc: accuracy\n")
    r = _invoke("run", pipe)
    assert r.exit_code == 2
    assert f"{pipe}:7: fit.metrc: unknown key (did you mean 'metric'?)" in r.output
    assert not (tmp_path / "out").exists()  # nothing was embedded or written


def test_every_problem_is_listed_with_its_line(tmp_path: Path):
    pipe = tmp_path / "bad.yaml"
    pipe.write_text(
        "data: {path: d, sampel: digits}\n"          # 1 unknown key
        "backbones:\n"
        "  - efficientnet_lite0\n"
        "  - {name: resnet50, pretrained: false, image_size: big}\n"   # 4 wrong type
        "heds: [logistic]\n"                         # 5 unknown top-level key
        "fit: {refit: all}\n"                        # 6 not a choice
        "seed: [1]\n"                                # 7 wrong type
    )
    with pytest.raises(PipelineError) as e:
        load_pipeline(pipe)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{pipe}:1: data.sampel: unknown key (did you mean 'sample'?)"
    assert lines[1].startswith(f"{pipe}:4: backbones[1].image_size: ")
    assert lines[2] == f"{pipe}:5: heds: unknown key (did you mean 'heads'?)"
    assert lines[3].startswith(f"{pipe}:6: fit.refit: ") and "'train+val'" in lines[3]
    assert lines[4].startswith(f"{pipe}:7: seed: ")


@pytest.mark.parametrize("text, expected", [
    ("data: d\nbackbones: [a, b]\nfuse: [[a, c]]\n", ":3: fuse[0][1]: unknown backbone 'c'"),
    ("data: d\nbackbones: [a]\nfuse: [[a]]\n", ":3: fuse[0]: a fused head needs at least two backbones"),
    ("data: d\nbackbones: [a, a]\nfuse: [[a, a]]\n", "names several backbones; give them an 'id'"),
    ("data: d\nbackbones:\n  - {name: a, weights: w.pth, pretrained: false}\n",
     ":3: backbones[0]: 'weights' and 'pretrained: false' contradict each other"),
    ("data: {path: d, sample: digits}\nbackbones: [a]\n", ":1: data: give either 'path' or 'sample'"),
    ("data: d\nbackbones: [a]\nheads: []\npredict: {path: p}\n", ":4: predict: needs a model"),
    ("data: d\nbackbones: []\n", ":2: backbones: "),
    ("data: d\nbackbones: [a]\nheads: [logistc]\n", ":3: heads[0].name: unknown head 'logistc'"),
    ("data: d\nbackbones: [a]\nfit: {metric: acuracy}\n", ":3: fit.metric: unknown metric 'acuracy'"),
    ("backbones: [a]\n", ": data: missing (required)"),
    ("data: d\nbackbones: [a]\nheads:\n  - {name: lgbm, params: {n_estimator: 5}}\n",
     ":4: heads[0]: params.n_estimator: not a parameter of the lgbm head (did you mean 'n_estimators'?)"),
    ("data: d\nbackbones: [a\n", ":3: not valid YAML"),
])
def test_impossible_combinations_and_types(tmp_path: Path, text: str, expected: str):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(text)
    with pytest.raises(PipelineError, match=None) as e:
        load_pipeline(pipe)
    assert expected in str(e.value), str(e.value)


def test_metric_of_another_task_stops_before_embedding(tmp_path: Path):
    pipe = _study(tmp_path, fit={"metric": "samples_f1"})
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 2 and f"{pipe}:" in r.output and "fit.metric: metric 'samples_f1' is not defined" in r.output
    assert not (tmp_path / "out").exists()


def test_unknown_backbone_name_is_caught_by_check(tmp_path: Path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("data: d\nbackbones:\n  - efficientnet_lite0\n  - resnet5O\n")
    r = _invoke("run", pipe, "--check")
    assert r.exit_code == 2 and f"{pipe}:4: backbones[1].name: unknown backbone 'resnet5O'" in r.output


@pytest.mark.parametrize("pipeline", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_passes_check(pipeline: Path):
    # the file alone: its data (under ../shared) and hub weights need not be on this machine
    r = _invoke("run", pipeline, "--check", "--set", "data.path=null", "--skip-unavailable")
    assert r.exit_code == 0, r.output
    assert ": ok" in r.output


def test_check_validates_what_the_run_would_stop_on_and_writes_nothing(tmp_path: Path):
    pipe = _study(tmp_path, predict={"path": "new", "out": "p.csv"})
    (tmp_path / "new").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "new" / "a.png")
    r = _invoke("run", pipe, "--check")
    assert r.exit_code == 0 and r.output.strip() == f"{pipe}: ok", r.output
    cases = [
        (["data.fractions=[0.7, 0.3, 0.3]"], "data.fractions: split fractions must sum to 1, got 0.7 + 0.3 + 0.3 = 1.3"),
        (["data.path=missing"], ": data: "),
        (["fit.metric=samples_f1"], "fit.metric: metric 'samples_f1' is not defined"),
        (["predict.path=gone"], "predict.path: not found"),
        (["backbones[0].weights=w.pth", "backbones[0].pretrained=true"], "weights unavailable offline"),
    ]
    for sets, says in cases:
        r = _invoke("run", pipe, "--check", *[a for kv in sets for a in ("--set", kv)])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, (sets, r.output)
    assert not (tmp_path / "out").exists()


def test_readme_schema_table_is_generated_from_the_models():
    page = (REPO / "docs" / "pipelines.md").read_text()
    assert page == readme_with_schema(page), (
        "docs/pipelines.md's key table is stale: python -c 'from featpipe.pipeline import update_readme; "
        "update_readme()'")
    assert "| `fit.metric` |" in page and "| `backbones[].tta` |" in page
    r = _invoke("run", "--schema")
    assert r.exit_code == 0 and "| `predict.path` |" in r.output


# ------------------------------------------------------------------------------------------ --set


def test_parse_key():
    assert parse_key("backbones[0].weights") == ("backbones", 0, "weights")
    assert parse_key("data.path") == ("data", "path")
    for bad in ("[0].x", "data..path", "data.", "a b"):
        with pytest.raises(PipelineError, match="cannot parse the key"):
            parse_key(bad)


def test_set_overrides_values_and_paths_are_relative_to_the_file(tmp_path: Path):
    (tmp_path / "conf").mkdir()
    pipe = tmp_path / "conf" / "p.yaml"
    pipe.write_text("data: {path: null}\nbackbones: [efficientnet_lite0, resnet50]\nfit: {metric: accuracy}\n")
    loaded = load_pipeline(pipe, ["data.path=../faces", "backbones[1].weights=w.pth", "fit.refit=train+val",
                                  "seed=7", "backbones[0].tta=hflip", "report=false"])
    c = loaded.config
    assert c.backbones[1].name == "resnet50" and c.backbones[1].weights == "w.pth"  # bare string expanded
    assert c.backbones[0].tta == "hflip" and c.fit.refit == "train+val" and c.seed == 7
    assert c.report.enabled is False
    from featpipe.pipeline import Study

    study = Study(loaded)
    assert study.path(c.data.path) == str((tmp_path / "faces").resolve())
    assert study.path("~/x") == str(Path("~/x").expanduser())
    with pytest.raises(PipelineError, match=r"--set fit\.metrc: fit\.metrc: unknown key \(did you mean 'metric'"):
        load_pipeline(pipe, ["fit.metrc=f1"])
    with pytest.raises(PipelineError, match=r"--set backbones\[5\]\.name: backbones has no item 5"):
        load_pipeline(pipe, ["backbones[5].name=vgg16"])
    with pytest.raises(PipelineError, match="expected KEY=VALUE"):
        load_pipeline(pipe, ["seed"])


# ------------------------------------------------------------------------- up to date / dry run


@pytest.mark.slow
def test_unchanged_rerun_skips_and_one_changed_head_refits_alone(tmp_path: Path):
    pipe = _study(tmp_path, heads=["logistic", {"name": "lgbm", "params": {"n_estimators": 40}}])
    assert _invoke("run", pipe, "-q").exit_code == 0
    models = tmp_path / "out" / "models"
    first = _mtimes(models)
    assert len(first) == 2
    r = _invoke("run", pipe, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "embed    test_efficientnet -> test_efficientnet-random-32px: up to date" in r.output
    assert "head     test_efficientnet/logistic: up to date" in r.output
    assert "head     test_efficientnet/lgbm: up to date" in r.output
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0 and _mtimes(models) == first  # nothing refitted
    r = _invoke("run", pipe, "--dry-run", "--set", "heads[1].params.n_estimators=50")
    assert "head     test_efficientnet/lgbm: will run (params n_estimators: 40 -> 50)" in r.output
    assert "test_efficientnet/logistic: up to date" in r.output
    r = _invoke("run", pipe, "-q", "--set", "heads[1].params.n_estimators=50")
    assert r.exit_code == 0, r.output
    after = _mtimes(models)
    changed = {k for k in after if after[k] != first[k]}
    assert len(changed) == 1 and changed.pop().endswith("lgbm/metrics.json")
    # a changed fit option refits every head; the plan says why
    r = _invoke("run", pipe, "--dry-run", "--set", "fit.preprocess=l2", "--set", "heads[1].params.n_estimators=50")
    assert "logistic: will run (fit preprocess: None -> 'l2')" in r.output
    # a new image: the cache gains a row, so the plan says the embed will run and heads follow
    make_class_folders(tmp_path / "extra", {"red": 1}, seed=9)
    (tmp_path / "extra" / "red" / "000.png").rename(tmp_path / "data" / "red" / "new.png")
    r = _invoke("run", pipe, "--dry-run", "--set", "heads[1].params.n_estimators=50")
    assert "will run (1 images: 1 new images)" in r.output
    assert "logistic: will run (its features are (re)computed first)" in r.output
    # a head fitted when the default refit was train (and not recorded) is not up to date any more
    from featpipe.pipeline._run import fingerprint

    mf = next(models.rglob("logistic/metrics.json"))
    m = json.loads(mf.read_text())
    assert m["stage"]["inputs"]["fit"]["refit"] == "train+val" and m["refit"] == "train+val"
    del m["stage"]["inputs"]["fit"]["refit"]
    m["stage"]["fingerprint"] = fingerprint(m["stage"]["inputs"])
    mf.write_text(json.dumps(m))
    (tmp_path / "data" / "red" / "new.png").unlink()
    r = _invoke("run", pipe, "--dry-run", "--set", "heads[1].params.n_estimators=50")
    assert "logistic: will run (fit refit: None -> 'train+val')" in r.output, r.output


def test_unavailable_weights_stop_before_work_unless_skipped(tmp_path: Path):
    # tests run with FEATPIPE_OFFLINE=1, so uncached hub weights are unavailable
    pipe = _study(tmp_path, backbones=[TINY_BACKBONE, "resnet18"])
    r = _invoke("run", pipe, "--dry-run")
    assert r.exit_code == 0
    assert "the run would stop before any work" in r.output and "resnet18: unavailable (hub weights" in r.output
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 2 and f"{pipe}:7: backbones[1] resnet18: hub weights" in r.output
    assert "--skip-unavailable" in r.output
    assert not (tmp_path / "out").exists()
    r = _invoke("run", pipe, "-q", "--skip-unavailable")
    assert r.exit_code == 0, r.output
    assert "resnet18: skipped (hub weights" in r.output
    assert len(list((tmp_path / "out" / "models").rglob("metrics.json"))) == 1


@pytest.mark.slow
def test_finetune_stage_lands_in_the_models_folder_and_is_skipped_when_unchanged(tmp_path: Path):
    tiny = {"backbone": "scratch-cnn", "epochs": 1, "width": 8, "depth": 2, "image_size": 16, "precision": "fp32"}
    pipe = _study(tmp_path, finetune=[tiny])
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0, r.output
    assert "finetune scratch-cnn: training (not fitted yet)" in r.output
    run = tmp_path / "out" / "models" / "finetune-scratch-cnn"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["head"].startswith("finetune") and metrics["stage"]["fingerprint"]
    assert (run / "model.joblib").exists() and (run / "history.json").exists()
    assert "finetune scratch-cnn: up to date" in _invoke("run", pipe, "--dry-run").output
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0 and "finetune scratch-cnn: up to date" in r.output
    assert json.loads((run / "metrics.json").read_text())["created"] == metrics["created"]  # not retrained
    with pytest.raises(PipelineError, match=r"finetune\[0\]\.unfreeze"):
        load_pipeline(_study(tmp_path, finetune=[{"backbone": "x", "unfreeze": "some"}]))


def test_fit_and_embed_keys_reach_the_stages(tmp_path: Path):
    """cv, bootstrap and max_memory (fit) reach fit_cache / open_cache: a tiny budget fits out of core."""
    pipe = _study(tmp_path, fit={"metric": "accuracy", "max_memory": "1KB", "bootstrap": 50})
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0, r.output
    assert "fitting out of core" in r.output
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "out" / "models").rglob("metrics.json")]
    assert metrics and all(m["out_of_core"] for m in metrics)
    assert all(m["bootstrap"]["n_resamples"] == 50 for m in metrics)


# ------------------------------------------------------------------------------- predict and fuse


@pytest.mark.slow
def test_predict_stage_and_fused_head(tmp_path: Path):
    make_class_folders(tmp_path / "unlabeled", {"pred": 4}, seed=5)  # a folder of images without labels
    pipe = _study(tmp_path, backbones=[TINY_BACKBONE, {**TINY_BACKBONE, "id": "tiny-tta", "tta": "hflip"}],
                  fuse=[[TINY, "tiny-tta"]], predict={"path": "unlabeled/pred", "out": "pred.csv"},
                  report=False)
    r = _invoke("run", pipe, "-q")
    assert r.exit_code == 0, r.output
    models = tmp_path / "out" / "models"
    fused = [p for p in models.rglob("metrics.json") if "__fuse-" in p.parent.parent.name]
    assert len(fused) == 1
    m = json.loads(fused[0].read_text())
    assert m["cache"]["backbone"]["kind"] == "fused" and len(m["cache"]["backbone"]["parts"]) == 2
    assert m["cache"]["feature_dim"] == 2 * json.loads(
        next(p for p in models.rglob("metrics.json") if "__fuse-" not in p.parent.parent.name).read_text())["cache"]["feature_dim"]
    rows = (tmp_path / "out" / "pred.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,error,p_") and len(rows) == 5
    assert all(r.split(",")[1] in ("red", "green", "blue") for r in rows[1:])
    r = _invoke("run", pipe, "-q")
    assert "predict: up to date" in r.output and "+tiny-tta/logistic: up to date" in r.output
    assert "predict  pred.csv: up to date" in _invoke("run", pipe, "--dry-run").output
    (tmp_path / "unlabeled" / "pred" / "000.png").unlink()
    assert "predict  pred.csv: will run (the model or the images changed)" in _invoke("run", pipe, "--dry-run").output


@pytest.mark.slow
def test_ready_scenes_pipeline_end_to_end_on_made_data(tmp_path: Path):
    """pipelines/scenes.yaml as shipped, offline: hub rows are skipped, the scratch CNN is fine-tuned (made tiny)."""
    root = tmp_path / "scenes"
    for split, n in (("train", 10), ("test", 4)):
        make_class_folders(root / split, {"forest": n, "sea": n, "street": n}, seed=len(split))
    make_class_folders(tmp_path / "p", {"x": 3}, seed=7)
    (tmp_path / "p" / "x").rename(root / "pred")
    out = tmp_path / "out"
    r = _invoke("run", REPO / "pipelines" / "scenes.yaml", "-q", "--skip-unavailable", "--out", out,
                "--set", f"data.path={root}", "--set", "backbones[0]={name: efficientnet_lite0, image_size: 64}",
                "--set", "finetune[0].epochs=1", "--set", "finetune[0].image_size=16", "--set", "finetune[0].width=8")
    assert r.exit_code == 0, r.output
    for hub in ("mobilenetv1_100", "vgg16", "resnet50"):
        assert f"{hub}: skipped" in r.output
    assert "finetune scratch-cnn: training" in r.output
    assert len(list((out / "models").rglob("metrics.json"))) == 3  # lite0 x (logistic, lgbm) + the fine-tune
    assert len((out / "predictions.csv").read_text().splitlines()) == 4
    assert (out / "report" / "index.html").exists()


def test_digits_sample_is_written_as_class_folders(tmp_path: Path):
    root = write_digits(tmp_path / "digits", per_class=3)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 30 and sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    assert write_digits(tmp_path / "digits", per_class=3) == root  # idempotent


def test_pipeline_and_embed_read_a_semicolon_multilabel_csv(tmp_path: Path):
    from _imgutil import write_image

    tags = ["red;round", "", "blue", "red", "blue;round", "", "round", "red;blue"] * 3
    for i in range(len(tags)):
        write_image(tmp_path / "img" / f"{i}.png", w=8, h=8, seed=i)
    (tmp_path / "d.csv").write_text("file,attrs,extra\n" + "\n".join(f"img/{i}.png,{t},x" for i, t in enumerate(tags)))
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({
        "name": "shapes", "data": {"path": "d.csv", "label_col": "attrs", "path_col": "file", "split_seed": 2},
        "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}],
        "heads": [], "report": False, "out": str(tmp_path / "out"),
    }))
    r = CliRunner().invoke(main, ["run", str(pipe), "-q"])
    assert r.exit_code == 0, r.output
    assert "24 images (" in r.output and "multilabel, 3 classes" in r.output and "split: seeded hash per image (seed 2" in r.output
    r = CliRunner().invoke(main, ["embed", "--data", str(tmp_path / "d.csv"), "--label-col", "attrs", "--path-col",
                                  "file", "--label-sep", ";", "--split-seed", "2", "--backbone", TINY,
                                  "--no-pretrained", "--image-size", str(TINY_SIZE),
                                  "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 0, r.output
    assert "multilabel, 3 classes" in r.output and "moved so every class/label is in every split" in r.output
    r = CliRunner().invoke(main, ["embed", "--data", str(tmp_path / "d.csv"), "--label-col", "attrs", "--path-col",
                                  "file", "--label-sep", "none", "--backbone", TINY, "--no-pretrained",
                                  "--cache-dir", str(tmp_path / "c"), "-q"])
    assert r.exit_code == 2 and "empty label in column 'attrs'; pass --unlabeled-empty" in r.output


def test_cli_choices_and_pipeline_choices_are_the_same_lists():
    from featpipe.backbones._base import PRECISION_CHOICES
    from featpipe.cli.finetune import finetune as finetune_cmd
    from featpipe.finetune import SCHEDULES
    from featpipe.pipeline._schema import BackboneConfig, FinetuneConfig

    opts = {o.name: o for o in finetune_cmd.params}
    assert tuple(opts["schedule"].type.choices) == SCHEDULES  # constant was offered by the CLI only
    assert FinetuneConfig(backbone="x", schedule="constant").schedule == "constant"
    assert tuple(opts["precision"].type.choices) == PRECISION_CHOICES
    for p in PRECISION_CHOICES:
        assert BackboneConfig(name="x", precision=p).precision == p


def test_readme_yaml_keys_exist_in_the_schema():
    """Every `key:` the README and docs/ show in backticks as a pipeline key is a key of the schema."""
    import re

    from featpipe.pipeline._schema import SECTIONS

    keys = {prefix + name for prefix, model in SECTIONS for name in model.model_fields}
    pages = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in pages)
    shown = set(re.findall(r"`((?:embed|fit|data|report|predict)\.[a-z_]+)`", text))
    assert shown and shown <= keys, shown - keys
    assert "ray_address:" not in text
