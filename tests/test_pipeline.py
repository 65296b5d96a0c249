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
    assert "24 images, multilabel, 3 classes" in r.output and "split: seeded hash per image (seed 2" in r.output
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
