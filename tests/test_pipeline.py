"""Whole studies: `featpipe run` on a YAML pipeline and the `featpipe demo` sample."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from featpipe.cli import main
from featpipe.samples import write_digits

from conftest import TINY, TINY_SIZE, make_class_folders


def test_run_pipeline_embeds_fits_and_reports(tmp_path: Path):
    make_class_folders(tmp_path / "data", {"red": 14, "green": 14, "blue": 14})
    pipe = tmp_path / "study.yaml"
    pipe.write_text(yaml.safe_dump({
        "name": "colours",
        "data": "data",  # relative to the pipeline file
        "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}],
        "heads": ["logistic"],
        "fit": {"metric": "accuracy"},
        "seed": 3,
        "out": str(tmp_path / "out"),
    }))
    r = CliRunner().invoke(main, ["run", str(pipe), "-q"])
    assert r.exit_code == 0, r.output
    caches = list((tmp_path / "out" / "cache").glob("colours__*.h5"))
    assert len(caches) == 1
    metrics = json.loads(next((tmp_path / "out" / "models").rglob("metrics.json")).read_text())
    assert metrics["head"] == "logistic" and metrics["seed"] == 3
    assert metrics["scores"]["test"]["accuracy"] > 0.8  # colour classes are easy even for random weights
    assert (tmp_path / "out" / "report" / "index.html").exists()
    # a second run reuses the cache
    r = CliRunner().invoke(main, ["run", str(pipe), "-q"])
    assert r.exit_code == 0 and "embedded 0, reused 42" in r.output


def test_bad_pipeline_file_is_one_line_error(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbones: [a]\n")
    r = CliRunner().invoke(main, ["run", str(bad)])
    assert r.exit_code == 2 and "needs at least 'data' and 'backbones'" in r.output
    r = CliRunner().invoke(main, ["run", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "not found" in r.output


def test_digits_sample_is_written_as_class_folders(tmp_path: Path):
    root = write_digits(tmp_path / "digits", per_class=3)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 30 and sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    assert write_digits(tmp_path / "digits", per_class=3) == root  # idempotent
