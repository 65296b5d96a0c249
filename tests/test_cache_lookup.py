"""Finding a dataset's cache (`fit-head --data`), split identity in cache names, retrying failed rows."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from PIL import Image

from featpipe.backbones import resolve_spec
from featpipe.cli import main
from featpipe.features.cache import FeatureCache
from featpipe.hardware import resolve_device

from conftest import TINY, TINY_SIZE, make_class_folders

TINY_ARGS = ["--backbone", TINY, "--image-size", str(TINY_SIZE)]


def _embed(data: Path, cache_dir: Path, *extra: str) -> tuple[Path, str]:
    r = CliRunner().invoke(main, ["embed", "--data", str(data), *TINY_ARGS, "--cache-dir", str(cache_dir), "-q",
                                  *extra])
    assert r.exit_code == 0, r.output
    return Path(r.output.strip().splitlines()[-1].removeprefix("cache: ")), r.output


def _fit(data: Path, cache_dir: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["fit-head", "--data", str(data), *TINY_ARGS, "--cache-dir", str(cache_dir),
                                     "--head", "logistic", "--out", str(out), *extra])


def _used_cache(out: Path) -> Path:
    (m,) = out.glob("*/logistic/metrics.json")
    return Path(json.loads(m.read_text())["cache"]["path"])


def test_fit_head_data_finds_the_cache_whatever_precision_made_it(tmp_path):
    image_folder = make_class_folders(tmp_path / "imgs", {"a": 5, "b": 5})  # half-precision on CPU is slow
    cache_dir = tmp_path / "cache"
    bf16, _ = _embed(image_folder, cache_dir, "--no-pretrained", "--precision", "bf16")
    r = _fit(image_folder, cache_dir, tmp_path / "m1", "--no-pretrained")  # --precision auto
    assert r.exit_code == 0, r.output
    assert _used_cache(tmp_path / "m1") == bf16  # the only cache of this dataset + backbone
    fp32, _ = _embed(image_folder, cache_dir, "--no-pretrained", "--precision", "fp32")
    fp16, _ = _embed(image_folder, cache_dir, "--no-pretrained", "--precision", "fp16")
    assert len({bf16, fp32, fp16}) == 3
    auto = resolve_spec(TINY, pretrained=False, precision="auto", device=resolve_device("auto")).precision
    r = _fit(image_folder, cache_dir, tmp_path / "m2", "--no-pretrained")
    assert r.exit_code == 0, r.output
    assert _used_cache(tmp_path / "m2") == {"bf16": bf16, "fp32": fp32}[auto]  # several: the one auto picks
    r = _fit(image_folder, cache_dir, tmp_path / "m3", "--no-pretrained", "--precision", "fp16")
    assert r.exit_code == 0 and _used_cache(tmp_path / "m3") == fp16  # an explicit precision is honoured
    {"bf16": bf16, "fp32": fp32}[auto].unlink()
    r = _fit(image_folder, cache_dir, tmp_path / "m4", "--no-pretrained")
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "--precision" in line
    others = [p for p in (bf16, fp32, fp16) if p.exists()]
    assert all(p.name in line for p in others)


def test_split_seed_and_fractions_are_part_of_the_cache_name_and_lookup(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    s1, out1 = _embed(image_folder, cache_dir, "--no-pretrained", "--split-seed", "1")
    s2, out2 = _embed(image_folder, cache_dir, "--no-pretrained", "--split-seed", "2")
    f2, _ = _embed(image_folder, cache_dir, "--no-pretrained", "--split-seed", "2", "--fractions", "0.5,0.25,0.25")
    assert len({s1, s2, f2}) == 3  # no split silently overwrites another's cache
    assert "embedded 0 images" in out2 and "reused 36" in out2  # features come from the seed-1 cache
    assert s1.exists() and FeatureCache.open(s2).dataset["split_seed"] == 2
    assert list(FeatureCache.open(s1).splits) != list(FeatureCache.open(s2).splits)
    assert FeatureCache.open(s1).dataset["split_seed"] == 1
    assert "split: seeded hash per image (seed 1" in out1
    r = _fit(image_folder, cache_dir, tmp_path / "m", "--no-pretrained", "--split-seed", "2")
    assert r.exit_code == 0, r.output
    assert _used_cache(tmp_path / "m") == s2
    r = _fit(image_folder, cache_dir, tmp_path / "m5", "--no-pretrained", "--split-seed", "2",
             "--fractions", "0.5,0.25,0.25")
    assert r.exit_code == 0 and _used_cache(tmp_path / "m5") == f2
    r = _fit(image_folder, cache_dir, tmp_path / "x", "--no-pretrained", "--split-seed", "3")
    assert r.exit_code == 2 and "no complete cache" in r.output and "split seed 3" in r.output


def test_seed_is_irrelevant_for_pretrained_weights(image_folder, tmp_path):
    import timm

    w = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model(TINY, num_classes=0).state_dict(), w)
    cache_dir = tmp_path / "cache"
    a, _ = _embed(image_folder, cache_dir, "--weights", str(w), "--seed", "3")
    b, out = _embed(image_folder, cache_dir, "--weights", str(w), "--seed", "5")
    assert a == b and "embedded 0 images" in out  # same weights, same features: the seed changes nothing
    r = _fit(image_folder, cache_dir, tmp_path / "m", "--weights", str(w), "--seed", "7")
    assert r.exit_code == 0, r.output
    assert _used_cache(tmp_path / "m") == a
    # random init: the seed is the weights, so it is part of the identity
    r3, _ = _embed(image_folder, cache_dir, "--no-pretrained", "--seed", "3")
    r5, _ = _embed(image_folder, cache_dir, "--no-pretrained", "--seed", "5")
    assert r3 != r5
    r = _fit(image_folder, cache_dir, tmp_path / "m5", "--no-pretrained", "--seed", "5")
    assert r.exit_code == 0 and _used_cache(tmp_path / "m5") == r5


def test_failed_rows_retry_when_transient_and_with_retry_failed(image_folder, tmp_path):
    from featpipe.data import load_dataset
    from featpipe.features.embed import embed_dataset

    (image_folder / "dog" / "text.jpg").write_text("not an image")  # a decode failure: permanent
    gone = image_folder / "cat" / "005.png"
    keep = gone.read_bytes()
    manifest = load_dataset(image_folder)
    gone.unlink()  # vanishes between listing and reading: an I/O failure, could be transient
    spec = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)
    res = embed_dataset(manifest, spec, cache_dir=tmp_path / "cache", progress=False)
    reasons = dict(res.failures)
    assert res.n_failed == 2 and "not found" in reasons["cat/005"]
    gone.write_bytes(keep)
    again = embed_dataset(load_dataset(image_folder), spec, cache_dir=tmp_path / "cache", progress=False)
    assert again.n_computed == 1 and again.n_failed == 1  # the I/O failure retried, the bad bytes not
    c = FeatureCache.open(res.path)
    assert c.ok[list(c.ids).index("cat/005")]
    _, out = _embed(image_folder, tmp_path / "cache", "--no-pretrained")
    assert "embedded 0 images" in out and "failed 1" in out
    _, out = _embed(image_folder, tmp_path / "cache", "--no-pretrained", "--retry-failed")
    assert "embedded 1 images" in out and "failed 1" in out and "dog/text" in out


def test_retry_failed_on_a_clean_cache_recomputes_nothing(image_folder, tmp_path):
    Image.new("RGB", (8, 8)).save(image_folder / "fox" / "black.png")
    _embed(image_folder, tmp_path / "cache", "--no-pretrained")
    _, out = _embed(image_folder, tmp_path / "cache", "--no-pretrained", "--retry-failed")
    assert "embedded 0 images" in out and "failed 0" in out


def test_cache_named_before_split_identity_is_taken_over(image_folder, tmp_path):
    from featpipe.backbones._base import config_hash
    from featpipe.features.cache import cache_filename

    path, _ = _embed(image_folder, tmp_path / "cache", "--no-pretrained")
    c = FeatureCache.open(path)
    legacy = path.with_name(cache_filename(c.dataset["name"], resolve_spec(
        TINY, pretrained=False, image_size=TINY_SIZE).tag(), config_hash({"features": c.key,
                                                                           "dataset": c.dataset["source"]})))
    assert legacy != path
    path.rename(legacy)
    again, out = _embed(image_folder, tmp_path / "cache", "--no-pretrained")
    assert again == path and not legacy.exists() and "embedded 0 images" in out


def test_fit_head_data_with_a_sklearn_head_never_imports_torch(tmp_path):
    """`fit-head --data` resolves `--precision auto` (torch, to look for a GPU) only when several caches
    differ by precision; a logistic head on the one cache starts without torch or timm."""
    import subprocess
    import sys

    data = make_class_folders(tmp_path / "imgs", {"a": 6, "b": 6})
    cache_dir = tmp_path / "cache"
    r = CliRunner().invoke(main, ["embed", "--data", str(data), "--backbone", "efficientnet_lite0", "--image-size",
                                  "64", "--cache-dir", str(cache_dir), "-q"])
    assert r.exit_code == 0, r.output
    args = ["fit-head", "--data", str(data), "--backbone", "efficientnet_lite0", "--image-size", "64",
            "--cache-dir", str(cache_dir), "--head", "logistic", "--out", str(tmp_path / "m")]
    code = (f"import sys\nfrom featpipe.cli import main\nmain({args!r}, standalone_mode=False)\n"
            "heavy = [m for m in ('torch', 'timm') if m in sys.modules]\nassert not heavy, heavy\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert list((tmp_path / "m").glob("*/logistic/model.joblib"))
