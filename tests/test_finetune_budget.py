"""Fine-tune inside a time budget: the duration parser, the plan, the schedule it sets, a budgeted run
that ends in time, the stop at the deadline when the machine slows down, and the defaults taken
from the data (grayscale-native scratch-cnn, batch size for small inputs)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import FinetuneError
from featpipe.finetune import FinetuneConfig, finetune
from featpipe.finetune._budget import Estimates, LRPlan, parse_duration, plan_epochs

from conftest import SMALL, TINY, make_class_folders

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def imported(tmp_path_factory):
    """One short run first: the budget tests time runs, not this test process's first imports."""
    root = tmp_path_factory.mktemp("warm")
    finetune(load_dataset(make_class_folders(root / "imgs", {"a": 6, "b": 6}, size=16)),
             FinetuneConfig(**SMALL, epochs=1), root / "run", progress=False, log=lambda s: None)


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("90s") == 90 and parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    assert parse_duration("2 min") == 120 and parse_duration(20) == 20 and parse_duration(None) is None
    for bad in ("soon", "10x", "m30", "", "0s", "-5m"):
        with pytest.raises(FinetuneError):
            parse_duration(bad)
    assert FinetuneConfig(budget="2m").budget == 120.0  # recorded in seconds
    r = CliRunner().invoke(main, ["finetune", "--data", "nowhere", "--budget", "soon", "--out", "x"])
    assert r.exit_code == 2


def test_plan_fits_the_time_left_and_respects_the_epoch_bound():
    est = Estimates(step=1.0, val=2.0, final=10.0, save=0.5)
    # 100 s left: the closing pass 10 s, then epochs of 10 steps + validation + save = 12.5 s -> 7 epochs
    assert plan_epochs(100.0, 10, 0, est, 1000) == (7, 70)
    assert plan_epochs(100.0, 10, 0, est, 5) == (5, 50)  # --epochs stays an upper bound
    # mid-epoch 3 (4 steps done in it): the rest of epoch 3 is 6 + 2.5 s
    epochs, total = plan_epochs(40.0, 10, 24, est, 1000, epochs_done=2)
    assert (epochs, total) == (4, 40)
    # not even the current epoch fits: train what does, then validate once; nothing fits: no more steps
    assert plan_epochs(20.0, 10, 0, est, 1000) == (1, 7)
    assert plan_epochs(5.0, 10, 30, est, 1000, epochs_done=3) == (4, 30)
    assert plan_epochs(500.0, 10, 30, est, 3, epochs_done=3) == (3, 30)  # the --epochs bound is reached
    for left in (15.0, 37.0, 80.0, 500.0):
        e, t = plan_epochs(left, 10, 0, est, 1000)
        assert t * est.step + e * (est.val + est.save) + est.final <= left


def test_lr_plan_is_torchs_cosine_and_onecycle_and_can_be_replanned():
    from torch.optim import lr_scheduler as S

    def lrs(make, steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.array(out)

    total, warm = 40, 8
    old = lrs(lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.01, total_iters=warm),
                                           S.CosineAnnealingLR(o, T_max=total - warm)], milestones=[warm]), total)
    new = lrs(lambda o: S.LambdaLR(o, LRPlan("cosine", total, warm)), total)
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-9)
    old = lrs(lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=total, pct_start=warm / total,
                                     cycle_momentum=False), total)
    new = lrs(lambda o: S.LambdaLR(o, LRPlan("onecycle", total, warm)), total)
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-9)
    plan = LRPlan("cosine", 100, 10)
    plan.total = 50  # a re-plan: the cosine now reaches 0 at step 50
    assert plan(50) == pytest.approx(0.0, abs=1e-12) and plan(30) == pytest.approx(0.5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    state = S.LambdaLR(opt, plan).state_dict()
    assert state["lr_lambdas"][0] == {"kind": "cosine", "total": 50, "warm": 10}  # plain values in last.pt


def _wall(fn) -> tuple[float, object]:
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def test_budget_run_ends_in_time_and_records_plan_and_actual(folder, tmp_path):
    budget = 8.0
    out = tmp_path / "run"
    args = ["finetune", "--data", str(folder), "--backbone", "scratch-cnn", "--width", "8", "--depth", "2",
            "--batch-size", "8", "--precision", "fp32", "--patience", "1000", "--budget", f"{budget:g}s", "-q",
            "--out", str(out)]
    wall, r = _wall(lambda: CliRunner().invoke(main, args))
    assert r.exit_code == 0, r.output
    assert wall <= budget + 1.5, (wall, r.output)
    assert "budget 8.0s: measured the first" in r.output and "finished in" in r.output
    h = json.loads((out / "history.json").read_text())
    b = h["budget"]
    assert b["seconds"] == budget and b["plans"] and b["planned_epochs"] == b["plans"][-1]["epochs"]
    assert b["planned_seconds"] <= budget and b["actual_seconds"] <= budget + 0.5
    # the budget, not an epoch count, ended the run: many epochs, the planned number, LR annealed to ~0
    assert 3 <= len(h["epochs"]) <= b["planned_epochs"] < 1000
    plan = b["plans"][-1]
    assert h["epochs"][-1]["lr"] < 0.05 * 3e-3 or len(h["epochs"]) < b["planned_epochs"], plan
    m = json.loads((out / "metrics.json").read_text())
    assert m["finetune"]["budget"]["planned_seconds"] == b["planned_seconds"]
    assert 0 < m["finetune"]["budget"]["actual_seconds"] <= b["actual_seconds"]


def test_deadline_stop_keeps_the_best_checkpoint(folder, tmp_path, monkeypatch):
    """The machine slows down 30x halfway through the plan: the epoch in progress is cut at the deadline,
    the run still writes every artifact in time, from the best epoch."""
    from featpipe.finetune import _train

    budget = 6.0
    real_build = _train._Run.build

    def build_then_slow_down_later(self):
        real_build(self)

        def slow(module, _inputs):
            # halfway through the planned steps, other processes take the cores: every step is slow
            if module.training and self.plan.total < 1000 * self.steps_per_epoch \
                    and self.sched.last_epoch >= self.plan.total // 2:
                time.sleep(1.0)

        self.net.register_forward_pre_hook(slow)

    monkeypatch.setattr(_train._Run, "build", build_then_slow_down_later)
    cfg = FinetuneConfig(**SMALL, patience=1000, budget=budget)
    wall, res = _wall(lambda: finetune(load_dataset(folder), cfg, tmp_path / "run", progress=False,
                                       log=lambda s: None))
    assert wall <= budget + 1.5
    h = res.history
    assert h["budget"]["stopped_at_deadline"] and h["epochs"][-1]["cut"]
    assert len(h["epochs"]) < h["budget"]["planned_epochs"] or h["epochs"][-1]["steps"] < 5
    best = max(h["epochs"], key=lambda e: (e["val_metric"], -e["val_loss"]))
    assert res.best_epoch == best["epoch"] == h["best_epoch"]
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["epoch"] == res.best_epoch
    assert res.metrics["scores"]["val"]["main"] == pytest.approx(best["val_metric"], abs=1e-9)
    assert (tmp_path / "run" / "model.joblib").is_file()


@pytest.mark.slow
def test_lp_ft_counts_its_linear_probe_inside_the_budget(folder, tmp_path):
    from featpipe.backbones import resolve_spec
    from featpipe.features.embed import embed_dataset

    budget = 10.0
    cfg = FinetuneConfig(backbone=TINY, pretrained=False, recipe="lp-ft", image_size=32, precision="fp32",
                         batch_size=8, patience=1000, budget=budget, cache_dir=str(tmp_path / "cache"))
    m = load_dataset(folder)
    wall, res = _wall(lambda: finetune(m, cfg, tmp_path / "run", progress=False, log=lambda s: None))
    assert wall <= budget + 1.5
    b, lp = res.history["budget"], res.history["linear_probe"]
    assert lp["seconds"] > 0 and b["plans"][0]["elapsed"] >= lp["seconds"]  # the plan starts from what it left
    assert b["actual_seconds"] <= budget + 0.5
    # no cache to reuse: the probe took the validation images and training images inside its share
    assert lp["cache"] is None and 0 < lp["train_images"] <= lp["of_train_images"] == 41
    assert not list((tmp_path / "cache").glob("*.h5"))
    # a complete cache is reused as before
    embed_dataset(m, resolve_spec(TINY, pretrained=False, image_size=32, precision="auto"),
                  cache_dir=tmp_path / "cache", progress=False)
    res = finetune(m, cfg, tmp_path / "run2", progress=False, log=lambda s: None)
    assert res.history["linear_probe"]["cache_reused"]


# ------------------------------------------------------------------------------ data defaults


def _gray_folders(root: Path, n: int = 10, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for ci, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            arr = np.clip(60 + 120 * ci + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, mode="L").save(root / cls / f"{k}.jpg")
    return root


def test_a_gray_dataset_makes_scratch_cnn_grayscale_native(tmp_path, folder):
    from featpipe.finetune._train import _Run

    gray = load_dataset(_gray_folders(tmp_path / "gray"))
    msgs: list[str] = []
    run = _Run(gray, FinetuneConfig(**SMALL), tmp_path / "x", msgs.append, False)
    assert run.cfg.in_channels == 1 and run.spec.arch.endswith("-c1")  # recorded in the spec
    assert any("gray" in m for m in msgs)
    run.build()
    assert run.store is not None and run.store.gray and run.store.data.shape[-1] == 1
    x, _, _ = next(iter(run._train_batches(1, 0, 0)))
    assert x.shape[1] == 1  # fed one channel
    assert _Run(gray, FinetuneConfig(**SMALL, in_channels=3), tmp_path / "y", msgs.append, False).cfg.in_channels == 3
    colour = _Run(load_dataset(folder), FinetuneConfig(**SMALL), tmp_path / "z", msgs.append, False)
    assert colour.cfg.in_channels == 3 and colour.spec.arch.endswith("-c3")
    # a pretrained backbone keeps its three channels
    assert _Run(gray, FinetuneConfig(backbone=TINY, pretrained=False, image_size=32), tmp_path / "t",
                msgs.append, False).cfg.in_channels == 3


def test_batch_size_default_grows_for_small_inputs():
    assert FinetuneConfig(backbone="scratch-cnn").resolved(native_size=48).batch_size == 128
    assert FinetuneConfig(backbone="scratch-cnn").resolved(native_size=80).batch_size == 64
    assert FinetuneConfig(image_size=128).resolved().batch_size == 32
    assert FinetuneConfig(backbone="scratch-cnn", batch_size=16).resolved(native_size=48).batch_size == 16
    assert FinetuneConfig(budget="1m").resolved().epochs == 1000 and FinetuneConfig().resolved().epochs == 10
    assert math.isclose(FinetuneConfig(budget="1m", epochs=4).resolved().epochs, 4)
