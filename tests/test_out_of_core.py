"""Heads on caches larger than the memory budget: features read from disk in slabs."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from featpipe.errors import HeadError
from featpipe.features.cache import FeatureCache, H5Rows
from featpipe.runs.fit import fit_cache, open_cache, parse_memory, write_run

from _digits import write_cache


def test_h5rows_reads_every_row_once_in_slabs(tmp_path):
    path = write_cache(tmp_path / "c.h5", "multiclass")
    full = FeatureCache.open(path).features
    rows = np.flatnonzero(np.arange(len(full)) % 3 != 1)  # interleaved, like a split
    lazy = H5Rows(path, rows, slab_rows=50)
    for rng in (None, np.random.default_rng(0)):
        seen = np.zeros(len(rows), int)
        for pos, block in lazy.iter_blocks(rng):
            assert len(block) <= 50
            np.testing.assert_array_equal(block, full[rows[pos]])
            seen[pos] += 1
        assert (seen == 1).all()
    np.testing.assert_array_equal(lazy.read(10, 37), full[rows[10:37]])
    np.testing.assert_array_equal(lazy.subset(np.arange(5, 9)).to_array(), full[rows[5:9]])


def test_budget_decides_in_memory_or_on_disk(tmp_path):
    path = write_cache(tmp_path / "c.h5", "multiclass")
    assert open_cache(path, "1GB").in_memory
    small = open_cache(path, "1KB")
    assert not small.in_memory and isinstance(small.features, H5Rows)
    dim = small.features.shape[1]
    # slabs follow the budget (a sixteenth, 1-32 MB), so a small budget means small reads
    assert small.features.slab_rows == max(64, (1 << 20) // (4 * dim))
    assert small.features.subset(np.arange(10)).slab_rows == small.features.slab_rows
    assert parse_memory("1.5k") == 1536 and parse_memory("2GiB") == 2 << 30 and parse_memory(7) == 7
    with pytest.raises(HeadError, match="cannot read memory size"):
        parse_memory("lots")


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("head", ["logistic", "lgbm", "mlp"])
def test_out_of_core_heads_match_in_memory_ones(tmp_path, task, head):
    path = write_cache(tmp_path / "c.h5", task)
    params = {"lgbm": {"pca": 16, "lgbm_grid": [{"num_leaves": 7, "min_child_samples": 5},
                                                {"num_leaves": 15, "min_child_samples": 20}]},
              "mlp": {"max_epochs": 30}, "logistic": {"epochs": 3}}
    (ooc,) = fit_cache(open_cache(path, "1KB"), head, head_params=params)
    mem_params = {"lgbm": {"grid": [{"num_leaves": 7, "min_child_samples": 5}], "pca": 16}}
    (mem,) = fit_cache(FeatureCache.open(path), head, head_params=mem_params, refit="train", cv=0)  # as out of core
    assert ooc.metrics["out_of_core"] and "out of core" in ooc.metrics["head_type"]
    assert not mem.metrics["out_of_core"]
    a, b = ooc.metrics["scores"]["test"]["main"], mem.metrics["scores"]["test"]["main"]
    assert a > b - 0.1, (a, b)  # same data, a streaming optimiser: close to the in-memory head
    chance = {"multiclass": 0.2, "binary": 0.3, "multilabel": 0.5}[task]
    assert a > chance
    # the bundle it writes is an ordinary model: features in memory, same probabilities
    d = write_run(ooc, tmp_path / "models")
    model = joblib.load(d / "model.joblib")
    cache = FeatureCache.open(path)
    te = cache.split_indices("test")
    np.testing.assert_allclose(model.predict_proba(cache.features[te].astype(np.float64)),
                               ooc.predictions["proba"][ooc.predictions["split"] == "test"], atol=1e-5)


def test_out_of_core_fits_the_final_model_on_train_and_refuses_cv(tmp_path):
    path = write_cache(tmp_path / "c.h5", "multiclass")
    (run,) = fit_cache(open_cache(path, "1KB"), "logistic", head_params={"logistic": {"epochs": 2}})
    assert run.metrics["refit"] == "train" and run.model.refit == "train"  # the default train+val needs RAM
    with pytest.raises(HeadError, match="refit on train only"):
        fit_cache(open_cache(path, "1KB"), "logistic", cv=3)
