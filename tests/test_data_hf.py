"""Hugging Face datasets as input: a real ``datasets`` DatasetDict made from PNGs, saved with save_to_disk,
read with its own splits and ClassLabel features; the Hub path fails fast offline in one line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from featpipe.cli import main
from featpipe.data import detect_source, load_dataset
from featpipe.errors import DatasetError

from conftest import TINY, TINY_SIZE, make_class_folders

datasets = pytest.importorskip("datasets")

CLASSES = ["blue", "green", "red"]
SPLITS = {"train": ("train", 10, 0), "val": ("validation", 3, 1), "test": ("test", 4, 2)}


def split_folders(root: Path) -> Path:
    """``root/<split>/<class>/*.png``: colour classes a tiny random network separates."""
    for folder, (_, n, seed) in SPLITS.items():
        make_class_folders(root / folder, dict.fromkeys(CLASSES, n), seed=seed)
    return root


def save_hf(folders: Path, out: Path, extra: dict | None = None) -> Path:
    """The same images as a DatasetDict (train/validation/test, a ClassLabel), saved with save_to_disk."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES),
                                  "note": datasets.Value("string")})
    parts = {}
    for folder, (hf_name, _, _) in SPLITS.items():
        files = [(f, c) for c in CLASSES for f in sorted((folders / folder / c).iterdir())]
        rows = {"image": [str(f) for f, _ in files], "label": [CLASSES.index(c) for _, c in files],
                "note": [f.name for f, _ in files]}
        for k, v in (extra or {}).get(hf_name, {}).items():
            rows[k] = rows[k] + v
        parts[hf_name] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return out


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Path]:
    folders = split_folders(tmp_path / "folders")
    return folders, save_hf(folders, tmp_path / "saved")


def test_saved_dataset_keeps_its_splits_class_labels_and_fingerprints(saved, tmp_path):
    folders, hf = saved
    assert detect_source(hf) == "hf" and detect_source("hf:owner/name") == "hf"
    m = load_dataset(hf, cache_dir=tmp_path / "cache")
    assert m.task == "multiclass" and m.classes == CLASSES and m.name == "saved"
    assert m.split_counts() == {"train": 30, "val": 9, "test": 12} and m.split_seed is None
    assert m.ids[:2] == ["train/0", "train/1"] and m.ids[-1] == "test/11"
    saved_dd = datasets.load_from_disk(str(hf))
    assert m.source == f"{hf.resolve()}@" + ",".join(f"{s}={saved_dd[s]._fingerprint}" for s in saved_dd)
    # the bytes are written once, content-addressed under the cache folder, and read like any image file
    first = Path(m.paths[0])
    assert first.parent.parent == (tmp_path / "cache" / "images").resolve()
    assert first.read_bytes() == (folders / "train" / "blue" / "000.png").read_bytes()
    again = load_dataset(hf, cache_dir=tmp_path / "cache")
    assert again.paths == m.paths and again.fingerprint() == m.fingerprint()
    # a dataset without a test split gets one carved out of train, seeded and recorded
    dd = datasets.load_from_disk(str(hf))
    datasets.DatasetDict({"train": dd["train"], "validation": dd["validation"]}).save_to_disk(str(tmp_path / "two"))
    m2 = load_dataset(tmp_path / "two", cache_dir=tmp_path / "cache", seed=4)
    assert m2.split_seed == 4 and m2.split_counts()["val"] == 9 and m2.split_counts()["test"] > 0


def test_a_new_revision_of_the_dataset_gets_a_new_cache_key(saved, tmp_path, tiny_spec):
    from featpipe.features.cache import cache_path_for

    _, hf = saved
    before = load_dataset(hf, cache_dir=tmp_path / "cache")
    dd = datasets.load_from_disk(str(hf))
    dd["train"] = dd["train"].filter(lambda row: row["note"] != "000.png")  # a new revision: a new fingerprint
    dd.save_to_disk(str(tmp_path / "v2"))
    shutil.rmtree(hf)
    (tmp_path / "v2").rename(hf)  # the same folder, new contents
    after = load_dataset(hf, cache_dir=tmp_path / "cache")
    assert len(after) == len(before) - 3
    assert before.source.split("@")[0] == after.source.split("@")[0] and before.source != after.source
    assert cache_path_for(before, tiny_spec, "k", tmp_path) != cache_path_for(after, tiny_spec, "k", tmp_path)


def test_multilabel_lists_unlabeled_rows_and_rows_without_image(tmp_path):
    make_class_folders(tmp_path / "imgs", {"a": 8, "b": 8})
    files = sorted(str(p) for p in (tmp_path / "imgs").rglob("*.png"))
    tag = datasets.ClassLabel(names=["sky", "sea"])
    feats = datasets.Features({"img": datasets.Image(), "tags": datasets.List(tag)})
    tags = [[i % 2] if i % 3 else [] for i in range(16)]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"img": files + [None], "tags": tags + [[0]]}, features=feats),
        "unsupervised": datasets.Dataset.from_dict({"img": files[:2], "tags": [[], []]}, features=feats),
    })
    dd.save_to_disk(str(tmp_path / "ml"))
    m = load_dataset(tmp_path / "ml", cache_dir=tmp_path / "cache")
    assert m.task == "multilabel" and m.classes == ["sky", "sea"]
    assert m.skipped == [("train/16", "no image")]
    assert m.split_counts()["unsupervised"] == 2 and not m.labeled[-2:].any()
    assert m.labels[:3].tolist() == [[0, 0], [0, 1], [1, 0]]
    assert {"train", "val", "test"} <= set(m.splits) and m.split_seed == 0

    single = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"img": files, "y": [-1] * 4 + [i % 2 for i in range(12)]}, features=single)
    ds.save_to_disk(str(tmp_path / "one"))  # a Dataset, not a DatasetDict: one train split
    m = load_dataset(tmp_path / "one", cache_dir=tmp_path / "cache")
    assert m.split_counts()["unlabeled"] == 4 and m.labeled.sum() == 12 and m.task == "binary"


def test_bad_hf_input_is_one_line(saved, tmp_path):
    _, hf = saved
    with pytest.raises(DatasetError, match=r"no column 'picture' \(columns: image, label, note\)"):
        load_dataset(hf, image_col="picture", cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"column 'note' is not of type ClassLabel \(or a list of ClassLabel\)"):
        load_dataset(hf, label_col="note", cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="option 'label_sep' does not apply to Hugging Face datasets"):
        load_dataset(hf, label_sep=";")
    plain = datasets.Dataset.from_dict({"image": [None], "label": ["cat"]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.Value("string")}))
    plain.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DatasetError, match=r"no column of type ClassLabel .*\(columns: image, label\); .*class_encode"):
        load_dataset(tmp_path / "plain", cache_dir=tmp_path / "cache")


def test_hub_names_fail_fast_offline_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DatasetError) as e:
        load_dataset("hf:no-owner/no-dataset:small")
    assert time.monotonic() - started < 20
    assert str(e.value) == ("Hugging Face dataset 'no-owner/no-dataset' (config 'small') cannot be loaded: offline "
                            "mode is set and it is not in the Hugging Face cache; save_to_disk it on a connected "
                            "machine and pass the folder")
    r = CliRunner().invoke(main, ["embed", "--data", "hf:no-owner/no-dataset", "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("error: Hugging Face dataset")
    assert not (tmp_path / "c").exists()


BACKBONE = ["--backbone", TINY, "--no-pretrained", "--image-size", str(TINY_SIZE)]


@pytest.mark.slow
def test_embed_and_fit_head_on_a_saved_dataset(tmp_path, monkeypatch):
    from featpipe.features.cache import failures

    folders = split_folders(tmp_path / "folders")
    # a broken image in the dataset is a failed row of the embed, like a broken file in a folder
    hf = save_hf(folders, tmp_path / "saved", extra={"train": {"image": [{"bytes": b"not a png", "path": "x.png"}],
                                                               "label": [0], "note": ["broken"]}})
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["embed", "--data", "saved", *BACKBONE, "-q"])
    assert r.exit_code == 0, r.output
    (cache,) = Path("cache").glob("*.h5")
    assert failures(cache, load_dataset(hf)) == [("train/30", "not an image (cannot identify format)")]
    r = CliRunner().invoke(main, ["fit-head", "--data", str(hf), *BACKBONE, "--head", "logistic", "--out", "models"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(next(Path("models").rglob("metrics.json")).read_text())
    assert metrics["scores"]["test"]["accuracy"] > 0.8


@pytest.mark.slow
def test_a_pipeline_on_a_saved_dataset_scores_as_the_same_images_in_split_folders(saved, tmp_path):
    folders, hf = saved
    scores = {}
    for kind, data in (("folders", folders), ("hf", hf)):
        pipe = tmp_path / f"{kind}.yaml"
        pipe.write_text(yaml.safe_dump({
            "name": "colours", "data": {"path": str(data)}, "heads": ["logistic"], "seed": 1,
            "backbones": [{"name": TINY, "pretrained": False, "image_size": TINY_SIZE}],
            "fit": {"metric": "accuracy"}, "report": False, "out": str(tmp_path / kind),
        }, sort_keys=False))
        r = CliRunner().invoke(main, ["run", str(pipe), "-q"])
        assert r.exit_code == 0, r.output
        metrics = json.loads(next((tmp_path / kind / "models").rglob("metrics.json")).read_text())
        scores[kind] = metrics["scores"]
    assert scores["hf"] == scores["folders"]
    assert scores["hf"]["test"]["accuracy"] > 0.8
