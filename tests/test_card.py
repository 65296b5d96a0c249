"""Model cards beside exported bundles, and the offline behaviour of --push."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from featpipe.cli import main
from featpipe.runs import read_record

from conftest import TINY, TINY_SIZE, make_class_folders


def _run(tmp_path: Path) -> Path:
    make_class_folders(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    pipe = tmp_path / "study.yaml"
    pipe.write_text(yaml.safe_dump({
        "name": "colours", "data": "data", "seed": 4, "out": str(tmp_path / "out"), "heads": ["logistic"],
        "report": False, "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}]}))
    assert CliRunner().invoke(main, ["run", str(pipe), "-q"]).exit_code == 0
    return next((tmp_path / "out" / "models").rglob("model.joblib"))


def test_export_card_states_the_recorded_facts(tmp_path):
    from huggingface_hub import ModelCard

    bundle = _run(tmp_path)
    rec = read_record(bundle.parent)
    r = CliRunner().invoke(main, ["export", str(bundle), "--card", "--out", str(tmp_path / "ship")])
    assert r.exit_code == 0, r.output
    card = ModelCard.load(tmp_path / "ship" / "README.md")
    assert card.data.library_name == "featpipe" and "backbone:test_efficientnet" in card.data.tags
    text = card.text
    for section in ("## Classes", "## Data", "## Backbone and head", "## Scores", "## Known limits",
                    "## Intended use", "## How to use", "## Reproducibility"):
        assert section in text
    test = rec["scores"]["test"]
    lo, hi = test["main_ci"]
    assert f"test accuracy: **{test['main']:.3f}** (95% bootstrap interval {lo:.3f}-{hi:.3f}, {test['n']} images)" in text
    assert "`blue`, `green`, `red`" in text and f"seed {rec['seed']}" in text
    assert "Small test set" in text  # 36 images: the test split is too small to trust, and the card says so


def test_a_card_without_its_run_record_says_so(tmp_path):
    bundle = _run(tmp_path)
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in ("model.joblib", "model.joblib.sha256"):
        shutil.copy(bundle.parent / f, alone / f)
    r = CliRunner().invoke(main, ["export", str(alone / "model.joblib"), "--card", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "s" / "README.md").read_text()
    assert "not recorded (the bundle was exported without its run record)" in text and "no test scores" in text


def test_push_offline_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    bundle = _run(tmp_path)
    r = CliRunner().invoke(main, ["export", str(bundle), "--push", "me/colours", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("error: cannot push to me/colours")
    assert "Traceback" not in r.output and (tmp_path / "p" / "README.md").is_file()
