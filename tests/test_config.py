"""One config model per stage: the command line's options are generated from the stages' sections, pipeline
files validate against the same sections, and a command and its one-stage pipeline give the same caches and
models."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from featpipe.backbones import PRECISION_CHOICES
from featpipe.backbones.config import BackboneConfig
from featpipe.cli import main
from featpipe.cli._common import config_options
from featpipe.data.config import DataConfig
from featpipe.errors import FeaturepipeError, PipelineError
from featpipe.features.config import EmbedConfig
from featpipe.finetune import FinetuneConfig
from featpipe.pipeline import Pipeline, options_markdown, validate_dict
from featpipe.reporting.config import ReportConfig
from featpipe.runs import read_record
from featpipe.runs.config import FitConfig
from featpipe.sections import cli_flag, extra, in_pipeline

from conftest import TINY, make_class_folders

ROOT = Path(__file__).resolve().parents[1]
# the features key of the tiny dataset below with TINY (random init, 32px, fp32, float32), as featpipe
# computed it before the options were generated from the sections: caches made then must still be found
TINY_KEY = "d7d8741161bef61a77e92b4ed006f30680c35786efcc838e0514e371738265ff"


def _cli(*args: object) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


def _cache_of(output: str) -> Path:
    return Path([ln for ln in output.splitlines() if ln.startswith("cache: ")][-1][len("cache: "):])


def test_command_line_and_pipeline_give_the_same_cache_and_model(tmp_path):
    folder = make_class_folders(tmp_path / "imgs", {"a": 20, "b": 20, "c": 20}, size=16)
    backbone = ["--backbone", TINY, "--no-pretrained", "--image-size", 32, "--precision", "fp32"]
    cache = _cache_of(_cli("embed", "--data", folder, "--name", "ds", *backbone, "--fractions", "0.6,0.2,0.2",
                           "--split-seed", 3, "--feature-dtype", "float16", "--cache-dir", tmp_path / "c1", "--quiet"))
    _cli("fit-head", "--cache", cache, "--head", "logistic", "--class-weight", "balanced", "--preprocess", "l2",
         "--bootstrap", 200, "--cv", 0, "--out", tmp_path / "m1")
    (tmp_path / "study.yaml").write_text(
        f"name: ds\ndata: {{path: {folder}, fractions: [0.6, 0.2, 0.2], split_seed: 3}}\n"
        f"backbones: [{{name: {TINY}, pretrained: false, image_size: 32, precision: fp32}}]\n"
        "embed: {feature_dtype: float16}\nheads: [logistic]\n"
        "fit: {class_weight: balanced, preprocess: l2, bootstrap: 200, cv: 0}\nreport: false\n"
        f"out: {tmp_path / 'study'}\n")
    _cli("run", tmp_path / "study.yaml", "--quiet")
    (other,) = (tmp_path / "study" / "cache").glob("*.h5")
    assert other.name == cache.name
    with h5py.File(cache) as a, h5py.File(other) as b:
        assert a.attrs["key"] == b.attrs["key"]
        assert np.array_equal(a["features"][:], b["features"][:])
    cli_run = tmp_path / "m1" / cache.stem / "logistic"
    study_run = tmp_path / "study" / "models" / cache.stem / "logistic"
    assert read_record(cli_run)["scores"] == read_record(study_run)["scores"]
    with np.load(cli_run / "predictions.npz") as p, np.load(study_run / "predictions.npz") as q:
        assert np.array_equal(p["proba"], q["proba"])


def test_tiny_dataset_keeps_its_cache_key_and_name(tmp_path):
    """The cache a default `featpipe embed` writes keeps the features key and file name it had when the
    command line passed its options to the library by hand."""
    from featpipe.backbones import resolve_spec
    from featpipe.data import load_dataset
    from featpipe.features.cache import FeatureCache, cache_path_for

    folder = make_class_folders(tmp_path / "imgs", {"a": 12, "b": 12}, size=16)
    cache = _cache_of(_cli("embed", "--data", folder, "--backbone", TINY, "--no-pretrained", "--image-size", 32,
                           "--precision", "fp32", "--cache-dir", tmp_path / "cache", "--quiet"))
    assert FeatureCache.open(cache).key == TINY_KEY
    manifest = load_dataset(folder, name=None, seed=0, fractions=(0.7, 0.15, 0.15))  # the old command's call
    spec = resolve_spec(TINY, pretrained=False, image_size=32, precision="fp32")
    assert cache == cache_path_for(manifest, spec, TINY_KEY, tmp_path / "cache")


COMMANDS = [("embed", [DataConfig, BackboneConfig, EmbedConfig]), ("fit-head", [DataConfig, BackboneConfig, FitConfig]),
            ("finetune", [DataConfig, FinetuneConfig]), ("report", [ReportConfig])]


@pytest.mark.parametrize("command, sections", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_every_section_field_is_the_option_of_the_same_name(command, sections):
    params = [p for p in main.commands[command].params if not getattr(p, "hidden", False)]
    for model in sections:
        for name, field in model.model_fields.items():
            flag = cli_flag(name, field)
            if flag is None:
                continue
            owner = [p for p in params if flag in p.opts]
            assert owner, f"{command}: {model.__name__}.{name} has no option {flag}"
            if flag == "--" + name.replace("_", "-"):
                assert owner[0].name == name, f"{command} {flag} fills {owner[0].name!r}, not {name!r}"
            if "flag" not in extra(field):  # a generated option: its help is the field's description
                assert owner[0].help == field.description.replace("`", "")


@pytest.mark.parametrize("command, old, new, value", [
    ("embed", "--dtype", "feature_dtype", "float16"),
    ("fit-head", "--thresholds", "threshold_mode", "global"),
    ("finetune", "--workers", "num_workers", "2"),
])
def test_old_flags_are_hidden_aliases(command, old, new, value):
    cmd = main.commands[command]
    alias = next(p for p in cmd.params if old in p.opts)
    assert alias.hidden and old not in CliRunner().invoke(main, [command, "--help"]).output
    assert any(p.name == new for p in cmd.params if not p.hidden)


def _echo_command(model, **kw):
    @click.command()
    @config_options(model, into="section", **kw)
    def show(section):
        click.echo(section.model_dump_json(exclude_unset=True))

    return show


def test_generated_options_build_the_section_from_what_was_given():
    cmd = _echo_command(FitConfig, aliases={"threshold_mode": "--thresholds"})
    run = CliRunner().invoke
    assert run(cmd, []).output.strip() == "{}"  # defaults are the section's own, nothing set
    assert run(cmd, ["--thresholds", "global"]).output.strip() == '{"threshold_mode":"global"}'
    assert run(cmd, ["--class-weight", "none", "--bootstrap", "0"]).output.strip() == (
        '{"class_weight":null,"bootstrap":0}')
    both = run(cmd, ["--thresholds", "global", "--threshold-mode", "per-class"])
    assert both.exit_code == 2 and "--thresholds is the old name of --threshold-mode" in both.output
    one_fold = run(cmd, ["--cv", "1"])  # the section's own validator, as one line naming the option
    assert isinstance(one_fold.exception, FeaturepipeError)
    assert str(one_fold.exception) == "--cv: 1 fold is no cross-validation; give 0 (never) or K >= 2"
    assert run(cmd, ["--metric", "nope"]).exit_code == 2
    ft = _echo_command(FinetuneConfig)
    assert run(ft, ["--in-channels", "1", "--budget", "2m", "--clip-grad", "0"]).output.strip() == (
        '{"budget":120.0,"clip_grad":null,"in_channels":1}')


def test_finetune_config_is_one_class_for_library_pipeline_and_command_line():
    (entry,) = typing.get_args(Pipeline.model_fields["finetune"].annotation)
    assert entry is FinetuneConfig
    with pytest.raises(ValueError, match="unfreeze"):  # pydantic's ValidationError
        FinetuneConfig(unfreeze="some")
    r = CliRunner().invoke(main, ["finetune", "--data", "d", "--out", "o", "--unfreeze", "some"])
    assert r.exit_code == 2 and r.output == "error: --unfreeze: must be head, all or last-N, got 'some'\n"


@pytest.mark.parametrize("option", [p for p in main.commands["finetune"].params
                                    if isinstance(p.type, click.Choice) and not p.hidden
                                    and p.name in FinetuneConfig.model_fields
                                    and in_pipeline(FinetuneConfig.model_fields[p.name])], ids=lambda p: p.name)
def test_every_finetune_choice_is_accepted_in_a_pipeline(option, tmp_path):
    """`--schedule constant` was offered by the command and refused in a pipeline; no choice may be."""
    for choice in option.type.choices:
        value = option.callback(None, option, choice)  # the command line's value: `none` of an optional is None
        validate_dict({"data": "x", "backbones": [TINY], "finetune": [{option.name: value}]}, tmp_path)


def test_study_wide_keys_are_refused_in_a_finetune_entry(tmp_path):
    for key, where in (("seed", "`seed`"), ("metric", "`fit.metric`"), ("device", "`device`")):
        assert not in_pipeline(FinetuneConfig.model_fields[key])
        with pytest.raises(PipelineError, match=f"set for the whole study, as {re.escape(where)}"):
            validate_dict({"data": "x", "backbones": [TINY], "finetune": [{key: "cpu" if key == "device" else 1}]},
                          tmp_path)


def test_one_range_per_value_on_command_line_and_pipeline(tmp_path):
    """The pipeline took image sizes the command line refused (4) and 0 bootstrap resamples the fit then
    crashed on; one section now says what is allowed for both."""
    with pytest.raises(PipelineError, match="image_size"):
        validate_dict({"data": "x", "backbones": [{"name": TINY, "image_size": 4}]}, tmp_path)
    assert FitConfig(bootstrap=0).bootstrap == 0
    precision_options = [p for c in ("embed", "fit-head", "finetune") for p in main.commands[c].params
                         if p.name == "precision"]
    assert len(precision_options) == 3
    assert all(tuple(p.type.choices) == PRECISION_CHOICES for p in precision_options)
    for model in (BackboneConfig, FinetuneConfig):
        assert typing.get_args(model.model_fields["precision"].annotation) == PRECISION_CHOICES


def test_zero_bootstrap_resamples_fit_without_an_interval(tmp_path):
    from featpipe.runs.fit import fit_cache, open_cache

    folder = make_class_folders(tmp_path / "imgs", {"a": 12, "b": 12}, size=16)
    cache = _cache_of(_cli("embed", "--data", folder, "--backbone", TINY, "--no-pretrained", "--image-size", 32,
                           "--precision", "fp32", "--cache-dir", tmp_path / "cache", "--quiet"))
    (run,) = fit_cache(open_cache(cache), "logistic", FitConfig(bootstrap=0, cv=0))
    assert run.metrics["scores"]["test"].get("main_ci") is None
    _cli("fit-head", "--cache", cache, "--bootstrap", 0, "--cv", 0, "--out", tmp_path / "models")


def test_options_doc_is_generated_from_the_sections():
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == options_markdown(), "docs/options.md is stale: featpipe run --options > docs/options.md"
    assert CliRunner().invoke(main, ["run", "--options"]).output == committed


# every field of the fine-tune config with its default, as runs recorded it before the two classes were merged
FINETUNE_DEFAULTS = {
    "backbone": "efficientnet_lite0", "weights": None, "pretrained": True, "layer": None, "image_size": None,
    "recipe": None, "unfreeze": "all", "epochs": None, "budget": None, "batch_size": None, "optimizer": "adamw",
    "lr": None, "backbone_lr_mult": None, "momentum": 0.9, "nesterov": True, "weight_decay": None,
    "schedule": "cosine", "warmup_epochs": 1.0, "clip_grad": 1.0, "label_smoothing": 0.1, "pos_weight": "none",
    "class_weight": None, "metric": None, "augment": "light", "hflip": None, "scale": None, "rotate": None,
    "shift": None, "color_jitter": None, "grayscale": None, "dropout": None, "bn": None, "width": 32, "depth": 3,
    "in_channels": None, "checkpoint_every": 0, "patience": None, "seed": 0, "precision": "auto", "device": "auto",
    "num_workers": None, "decode_once": None, "cache_dir": "cache",
}


def test_pipeline_finetune_runs_keep_their_stage_inputs(tmp_path):
    """A fine-tune entry's recorded config (its up-to-date fingerprint) is what it was, so runs fitted
    before the merge are not trained again."""
    from featpipe.pipeline import Study

    assert FinetuneConfig().to_dict() == FINETUNE_DEFAULTS
    folder = make_class_folders(tmp_path / "imgs", {"a": 6, "b": 6}, size=16)
    loaded = validate_dict({"data": str(folder), "backbones": [TINY], "seed": 3, "fit": {"metric": "accuracy"},
                            "finetune": [{"backbone": "scratch-cnn", "id": "s", "budget": "2m", "width": 8}]}, tmp_path)
    study = Study(loaded, out=tmp_path / "out")
    out, _, inputs = study._finetune_job(loaded.config.finetune[0])
    assert out.name == "finetune-s"
    assert inputs["config"] == {**FINETUNE_DEFAULTS, "backbone": "scratch-cnn", "budget": 120.0, "width": 8,
                                "metric": "accuracy", "seed": 3, "cache_dir": str(tmp_path / "out" / "cache")}
