"""Ray Data engine: same cache as the local engine (rows, hashes, failed rows, features), same resume.

One local Ray instance serves the whole module (start-up costs seconds); the engine uses it as it is.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray
from click.testing import CliRunner
from PIL import Image

from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.features.cache import FAILED, OK, PENDING, FeatureCache, read_attrs
from featpipe.features.embed import embed_dataset

from conftest import TINY, TINY_SIZE, make_class_folders

pytestmark = pytest.mark.slow  # Ray start-up and actor pools: a few seconds per test on 2 cores


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def _with_bad_images(root: Path) -> Path:
    folder = make_class_folders(root, {"cat": 6, "dog": 6}, size=20)
    (folder / "cat" / "empty.jpg").write_bytes(b"")
    (folder / "dog" / "notes.jpg").write_text("this is text, not a JPEG")
    jpg = folder / "dog" / "cut.jpg"
    Image.open(folder / "dog" / "000.png").save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    return folder


def _rows(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: f[k][...] for k in ("ids", "status", "error", "content_hash", "size", "mtime_ns", "features")}
        out["attrs"] = read_attrs(f)
    return out


def _assert_same_cache(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    for k in ("ids", "status", "error", "content_hash", "size", "mtime_ns"):
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
    np.testing.assert_allclose(ra["features"], rb["features"], rtol=0, atol=1e-5)
    assert ra["attrs"]["key"] == rb["attrs"]["key"]


def test_ray_engine_cache_equals_local_engine_cache(tmp_path):
    folder = _with_bad_images(tmp_path / "imgs")
    args = ["embed", "--data", str(folder), "--backbone", TINY, "--no-pretrained",
            "--image-size", str(TINY_SIZE), "-q"]
    local = CliRunner().invoke(main, args + ["--cache-dir", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    r = CliRunner().invoke(main, args + ["--cache-dir", str(tmp_path / "ray"), "--engine", "ray",
                                         "--ray-actors", "1", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert "embedded 15 images" in r.output and "failed 3" in r.output
    assert "dog/notes: not an image" in r.output
    (a,), (b,) = (tmp_path / "local").glob("*.h5"), (tmp_path / "ray").glob("*.h5")
    assert a.name == b.name  # same key, same file name
    _assert_same_cache(a, b)
    c = FeatureCache.open(b)
    assert int(c.ok.sum()) == 12 and int((c.status == FAILED).sum()) == 3
    assert not c.features[c.status == FAILED].any() and np.abs(c.features[c.ok]).sum(axis=1).min() > 0
    assert c.attrs["timings"]["engine"] == "ray" and c.attrs["timings"]["device"] == "cpu"
    # a second Ray run finds nothing to do
    again = CliRunner().invoke(main, args + ["--cache-dir", str(tmp_path / "ray"), "--engine", "ray"])
    assert again.exit_code == 0 and "embedded 0 images" in again.output and "reused 15" in again.output


def test_ray_engine_resumes_a_partial_cache_and_embeds_only_added_images(tmp_path, tiny_spec):
    folder = make_class_folders(tmp_path / "imgs", {"a": 8, "b": 8}, size=20)
    full = embed_dataset(load_dataset(folder), tiny_spec, cache_dir=tmp_path / "local", progress=False)
    part = embed_dataset(load_dataset(folder), tiny_spec, cache_dir=tmp_path / "ray", progress=False)
    with h5py.File(part.path, "r+") as f:  # as left by a run killed after 10 of 16 rows
        f["status"][10:16] = PENDING
        f["features"][10:16] = 0
        f.attrs["completed"] = False
    with pytest.raises(Exception, match="incomplete"):
        FeatureCache.open(part.path)
    res = embed_dataset(load_dataset(folder), tiny_spec, cache_dir=tmp_path / "ray", progress=False,
                        engine="ray", ray_actors=1, batch_size=4)
    assert res.path == part.path and (res.n_computed, res.n_reused, res.n_failed) == (6, 10, 0)
    _assert_same_cache(full.path, res.path)
    for k in range(2):
        Image.new("RGB", (20, 20), (40 * k, 200, 30)).save(folder / "b" / f"new{k}.png")
    res = embed_dataset(load_dataset(folder), tiny_spec, cache_dir=tmp_path / "ray", progress=False,
                        engine="ray", ray_actors=1)
    full = embed_dataset(load_dataset(folder), tiny_spec, cache_dir=tmp_path / "local", progress=False)
    assert (res.n_computed, res.n_reused) == (2, 16) and (full.n_computed, full.n_reused) == (2, 16)
    _assert_same_cache(full.path, res.path)
    assert FeatureCache.open(res.path).ok.all()


def test_ray_engine_embeds_npz_arrays_like_the_local_engine(tmp_path, tiny_spec):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "arr.npz", images=rng.integers(0, 255, (20, 12, 12, 3), dtype=np.uint8),
             labels=np.arange(20) % 2)
    ds = load_dataset(tmp_path / "arr.npz")
    a = embed_dataset(ds, tiny_spec, cache_dir=tmp_path / "local", progress=False)
    b = embed_dataset(ds, tiny_spec, cache_dir=tmp_path / "ray", progress=False, engine="ray", ray_actors=1)
    assert b.n_computed == 20 and b.n_failed == 0
    _assert_same_cache(a.path, b.path)
    assert set(_rows(b.path)["status"]) == {OK}


def test_ray_engine_without_ray_is_a_one_line_error(tmp_path, monkeypatch):
    folder = make_class_folders(tmp_path / "imgs", {"a": 2, "b": 2})
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    r = CliRunner().invoke(main, ["embed", "--data", str(folder), "--backbone", TINY, "--no-pretrained",
                                  "--cache-dir", str(tmp_path / "c"), "--engine", "ray", "-q"])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("error: the Ray engine (--engine ray) needs ray[data], which is not installed: "
                                "pip install 'featpipe[ray]'")
    assert not (tmp_path / "c").exists()
