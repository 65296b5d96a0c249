"""Integrity of what a cache reads back: checksummed feature chunks, damaged rows re-embedded, old caches."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import CacheError
from featpipe.features import cache as fcache
from featpipe.features.cache import FeatureCache, rows_to_embed
from featpipe.features.embed import embed_dataset

from conftest import TINY, TINY_SIZE

EMBED_ARGS = ["--backbone", TINY, "--no-pretrained", "--image-size", str(TINY_SIZE), "-q"]
CHUNK_ROWS = 8


@pytest.fixture
def small_chunks(monkeypatch, tiny_spec):
    """Chunks of CHUNK_ROWS rows, so one damaged chunk is a few rows of the 36-image folder."""
    from featpipe.backbones import load_backbone

    dim = load_backbone(tiny_spec, "cpu").feature_dim
    monkeypatch.setattr(fcache, "CHUNK_BYTES", CHUNK_ROWS * dim * 4)


def _embed(folder: Path, spec, cache_dir: Path):
    return embed_dataset(load_dataset(folder), spec, cache_dir=cache_dir, progress=False)


def _flip_byte_in_chunk(path: Path, chunk: int) -> None:
    """Make the first float32 of a stored chunk 1.7e38 (high byte 0x7f) by writing the file's bytes."""
    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 3)
        old = fh.read(1)
        fh.seek(info.byte_offset + 3)
        fh.write(b"\x7f" if old != b"\x7f" else b"\x3f")


def test_flipped_byte_in_a_feature_chunk_is_refused_on_read_and_reembedded(image_folder, tiny_spec, tmp_path,
                                                                           small_chunks):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    with h5py.File(res.path, "r") as f:
        assert f["features"].fletcher32 and f["features"].chunks[0] == CHUNK_ROWS
    before = FeatureCache.open(res.path).features
    _flip_byte_in_chunk(res.path, 1)  # rows 8-15

    r = CliRunner().invoke(main, ["fit-head", "--cache", str(res.path), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "is damaged: feature rows 8-15 fail their checksum" in r.output
    with pytest.raises(CacheError, match="rows 8-15 fail their checksum"):  # out of core too
        FeatureCache.open(res.path, in_memory=False).features.to_array()
    assert rows_to_embed(res.path, load_dataset(image_folder)) == (8, "8 rows failing their checksum (damaged file)")

    r = CliRunner().invoke(main, ["embed", "--data", str(image_folder), *EMBED_ARGS,
                                  "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert "embedded 8 images" in r.output and "reused 28" in r.output
    assert "8 rows failed their checksum (the cache file was damaged): embedded again" in r.output
    after = FeatureCache.open(res.path)
    np.testing.assert_allclose(after.features, before, rtol=1e-4, atol=1e-6)
    with h5py.File(res.path, "r") as f:
        assert f["features"].fletcher32
    assert _embed(image_folder, tiny_spec, tmp_path / "cache").n_computed == 0


def test_damaged_chunk_with_new_images_keeps_the_other_rows(image_folder, tiny_spec, tmp_path, small_chunks):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    before = dict(zip(FeatureCache.open(res.path).ids, FeatureCache.open(res.path).features, strict=True))
    _flip_byte_in_chunk(res.path, 4)  # rows 32-35, the last (short) chunk
    Image.new("RGB", (16, 16), (10, 200, 30)).save(image_folder / "cat" / "new.png")
    again = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert (again.n_computed, again.n_reused, again.n_damaged) == (5, 32, 4)
    c = FeatureCache.open(again.path)
    for i, row in zip(c.ids, c.features, strict=True):
        if i in before:
            np.testing.assert_allclose(row, before[i], rtol=1e-4, atol=1e-6)


def test_cache_written_before_the_checksum_keeps_working(image_folder, tiny_spec, tmp_path):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    with h5py.File(res.path, "r+") as f:  # the old layout: one contiguous, unchecked feature array
        feats = f["features"][...]
        ids = list(f["ids"].asstr()[...])
        del f["features"]
        f.create_dataset("features", data=feats)
    assert FeatureCache.open(res.path, in_memory=False).features.to_array().shape == feats.shape
    np.testing.assert_array_equal(FeatureCache.open(res.path).features, feats)
    again = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert (again.n_computed, again.n_reused, again.n_damaged) == (0, 36, 0)
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(res.path), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    Image.new("RGB", (16, 16), (10, 200, 30)).save(image_folder / "cat" / "new.png")
    grown = _embed(image_folder, tiny_spec, tmp_path / "cache")  # a new layout: written with the checksum
    assert (grown.n_computed, grown.n_reused) == (1, 36)
    with h5py.File(grown.path, "r") as f:
        assert f["features"].fletcher32
    c = FeatureCache.open(grown.path)
    old = dict(zip(ids, feats, strict=True))
    np.testing.assert_array_equal(np.array([old[i] for i in c.ids if i in old]),
                                  c.features[[i in old for i in c.ids]])
