"""Fine-tune stage: training, early stopping, resume after kill -9, augmentation per split, multilabel,
the bundle, finetuned: embedding, bad images, and the trainable backbone's layer cut."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.bundle.io import load_model
from featpipe.checksum import file_id
from featpipe.cli import main
from featpipe.data import Manifest, load_dataset
from featpipe.errors import BackboneError
from featpipe.features.cache import FeatureCache, features_key
from featpipe.features.embed import embed_dataset
from featpipe.finetune import FinetuneConfig, build_transforms, finetune

from conftest import SMALL, TINY, make_class_folders

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_loss_decreases_and_learns_a_toy_set(folder, tmp_path):
    res = finetune(load_dataset(folder), FinetuneConfig(**SMALL, epochs=6, patience=10, lr=1e-2), tmp_path / "run",
                   progress=False, log=lambda m: None)
    losses = [e["train_loss"] for e in res.history["epochs"]]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    assert res.metrics["scores"]["val"]["main"] > 0.6  # chance is 1/3
    assert res.metrics["head"] == "finetune-ft" and res.metrics["task"] == "multiclass"
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "val_metric"} <= set(hist["epochs"][0])
    for f in ("best.pt", "last.pt", "metrics.json", "predictions.npz", "model.joblib", "model.joblib.sha256"):
        assert (tmp_path / "run" / f).is_file(), f


def test_early_stopping_restores_the_best_epoch(folder, tmp_path):
    # a huge SGD step wrecks the net after the first epoch: validation stops improving
    cfg = FinetuneConfig(**{**SMALL, "precision": "fp32"}, epochs=12, patience=2, optimizer="sgd", lr=5.0,
                         schedule="constant", warmup_epochs=0, clip_grad=None)
    res = finetune(load_dataset(folder), cfg, tmp_path / "run", progress=False, log=lambda m: None)
    ep = res.history["epochs"]
    assert res.history["stopped_early"] and len(ep) == res.best_epoch + 2 < 12
    best = max(ep, key=lambda e: (e["val_metric"], -e["val_loss"]))
    assert best["epoch"] == res.best_epoch
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["epoch"] == res.best_epoch
    # the bundle is the best epoch's network, not the last one
    assert res.metrics["scores"]["val"]["main"] == pytest.approx(best["val_metric"], abs=1e-9)
    assert res.metrics["finetune"]["best_epoch"] == res.best_epoch


def test_augmentation_only_on_train(tmp_path):
    cfg = FinetuneConfig(augment="strong", image_size=32).resolved()
    spec = resolve_spec(TINY, pretrained=False, image_size=32)
    bb = load_backbone(spec)
    t = build_transforms(cfg, bb.data_config)
    names = [type(x).__name__ for x in t["train"].transforms]
    assert {"RandomAffine", "RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "ColorJitter",
            "RandomGrayscale"} <= set(names)
    assert not any("Random" in type(x).__name__ or "Jitter" in type(x).__name__ for x in t["eval"].transforms)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    # val/test see exactly what embed sees, every time
    assert torch.equal(t["eval"](img), bb.preprocess(img)) and torch.equal(t["eval"](img), t["eval"](img))
    none = build_transforms(FinetuneConfig(augment="none").resolved(), bb.data_config)
    assert none["train"] is none["eval"]


@pytest.mark.parametrize("decode_once", [False, None])
def test_validation_and_test_use_the_eval_transform(folder, tmp_path, monkeypatch, decode_once):
    from featpipe.finetune import _train

    used: dict[str, set[int]] = {}
    orig, orig_stored = _train._Run._loader, _train._Run._stored_batches

    def spy(self, rows, transform, *args, **kwargs):
        kind = "train" if transform is self.transforms["train"] else "eval"
        used.setdefault(kind, set()).update(int(r) for r in rows)
        return orig(self, rows, transform, *args, **kwargs)

    def spy_stored(self, rows, store, *args, **kwargs):  # the decoded fast path
        used.setdefault("train" if store is self.store else "eval", set()).update(int(r) for r in rows)
        return orig_stored(self, rows, store, *args, **kwargs)

    monkeypatch.setattr(_train._Run, "_loader", spy)
    monkeypatch.setattr(_train._Run, "_stored_batches", spy_stored)
    m = load_dataset(folder)
    res = finetune(m, FinetuneConfig(**SMALL, epochs=1, augment="strong", decode_once=decode_once),
                   tmp_path / "run", progress=False, log=lambda s: None)
    assert res.history["decoded_once"] is (decode_once is None)
    split = np.asarray(m.splits)
    assert {split[r] for r in used["train"]} == {"train"}
    assert {split[r] for r in used["eval"]} == {"val"}  # test rows only pass through the frozen bundle


def _multilabel_manifest(root: Path, n: int = 60) -> Manifest:
    """Two labels read off the colour channels (red-ish, blue-ish), one of them rare."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(n):
        y = np.array([i % 2 == 0, i % 5 == 0], dtype=np.uint8)
        base = np.array([200 * y[0], 60, 200 * y[1]], dtype=float)
        arr = np.clip(base + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        p = root / f"{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
        labels.append(y)
    splits = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    return Manifest(name="ml", source=str(root), ids=[f"{i:03d}" for i in range(n)], paths=paths, splits=splits,
                    labels=np.array(labels), labeled=np.ones(n, bool), task="multilabel", classes=["red", "blue"])


def test_multilabel_bce_with_auto_pos_weight(tmp_path):
    from featpipe.finetune._train import _Run

    m = _multilabel_manifest(tmp_path / "ml")
    cfg = FinetuneConfig(**SMALL, epochs=4, pos_weight="auto", lr=1e-2)
    run = _Run(m, cfg, tmp_path / "x", lambda s: None, False)
    run.build()
    assert isinstance(run.criterion, torch.nn.BCEWithLogitsLoss)
    y = np.asarray(m.labels)[run.rows["train"]]
    want = (len(y) - y.sum(0)) / y.sum(0)
    np.testing.assert_allclose(run.criterion.pos_weight.cpu().numpy(), want, rtol=1e-6)
    res = finetune(m, cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert res.metrics["task"] == "multilabel" and res.metrics["threshold"]["used"] == "per-class"
    z = np.load(tmp_path / "run" / "predictions.npz")
    assert z["proba"].shape[1] == 2 and z["pred"].dtype == np.uint8


@pytest.mark.slow
def test_bundle_round_trips_in_a_fresh_process_and_predict(folder, tmp_path):
    out = tmp_path / "run"
    finetune(load_dataset(folder), FinetuneConfig(**SMALL, epochs=2), out, progress=False, log=lambda s: None)
    z = np.load(out / "predictions.npz")
    test = [str(p) for p, s in zip(z["paths"], z["split"], strict=True) if s == "test"]
    want = z["proba"][z["split"] == "test"]
    # load_model tells the bundle where it lies: its checkpoint is found beside it by name and hash
    code = ("import sys, json; from featpipe.bundle.io import load_model; m = load_model(sys.argv[1]); "
            "print(json.dumps(m.predict_proba(sys.argv[2:]).tolist())); print(json.dumps(list(m.predict(sys.argv[2:]))))")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(out / "model.joblib"), *test], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    np.testing.assert_allclose(np.array(json.loads(lines[0])), want, atol=1e-4)
    classes = list(load_model(out / "model.joblib").classes_)
    assert json.loads(lines[1]) == [classes[i] for i in want.argmax(1)]
    res = CliRunner().invoke(main, ["predict", "--model", str(out / "model.joblib"), *test[:3]])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 3
    # the run folder moved elsewhere: the bundle finds best.pt next to itself by name and hash
    moved = shutil.move(str(out), str(tmp_path / "elsewhere"))
    np.testing.assert_allclose(load_model(Path(moved) / "model.joblib").predict_proba(test), want, atol=1e-4)


def test_finetuned_backbone_embeds_and_heads_refit(folder, tmp_path):
    out = tmp_path / "run"
    m = load_dataset(folder)
    finetune(m, FinetuneConfig(**SMALL, epochs=2), out, progress=False, log=lambda s: None)
    spec = resolve_spec(f"finetuned:{out}")
    assert spec.kind == "finetuned" and spec.weights_id == file_id(out / "best.pt") and spec.image_size == 16
    res = embed_dataset(m, spec, cache_dir=tmp_path / "cache", progress=False)
    cache = FeatureCache.open(res.path)
    # the fine-tuned bundle on these cached features reproduces the run's own predictions
    model = load_model(out / "model.joblib")
    z = np.load(out / "predictions.npz")
    pos = {i: k for k, i in enumerate(cache.ids)}
    X = np.asarray(cache.features)[[pos[i] for i in z["ids"]]]
    np.testing.assert_allclose(model.predict_proba(X), z["proba"], atol=1e-4)
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(res.path), "--head", "logistic",
                                  "--out", str(tmp_path / "models")])
    assert r.exit_code == 0, r.output
    # another checkpoint is another backbone: never the same cache
    base_key = features_key(load_backbone(resolve_spec("scratch-cnn-w8-d2-c3", image_size=16)), "float32")[0]
    assert res.key != base_key
    with pytest.raises(BackboneError, match="no fine-tuned checkpoint"):
        resolve_spec(f"finetuned:{tmp_path / 'nope'}")


def test_corrupt_train_image_is_skipped_and_counted(folder, tmp_path):
    (folder / "cat" / "broken.png").write_bytes(b"not an image at all")
    m = load_dataset(folder, fractions=(0.7, 0.15, 0.15))
    bad = m.ids.index(next(i for i in m.ids if "broken" in i))
    m.splits[bad] = "train"
    res = finetune(m, FinetuneConfig(**SMALL, epochs=2), tmp_path / "run", progress=False, log=lambda s: None)
    assert [i for i, _ in res.failures] == [m.ids[bad]]
    assert res.metrics["finetune"]["n_unreadable"] == 1
    assert m.ids[bad] not in set(np.load(tmp_path / "run" / "predictions.npz")["ids"])


def test_cli_errors_are_one_line(folder, tmp_path):
    runner = CliRunner()
    base = ["finetune", "--data", str(folder), "--backbone", "scratch-cnn", "--width", "8", "--depth", "2",
            "--epochs", "1", "--precision", "fp32", "-q", "--out", str(tmp_path / "run")]
    r = runner.invoke(main, [*base, "--unfreeze", "last-2"])
    assert r.exit_code == 2 and "scratch-cnn trains from random init" in r.output
    r = runner.invoke(main, [*base, "--unfreeze", "sideways"])
    assert r.exit_code == 2 and "--unfreeze: must be" in r.output
    r = runner.invoke(main, base)
    assert r.exit_code == 0, r.output
    assert "best epoch 1" in r.output
    r = runner.invoke(main, base)
    assert r.exit_code == 2 and "--resume" in r.output
    r = runner.invoke(main, [*base, "--resume", "--lr", "0.5"])
    assert r.exit_code == 2 and "changed options: lr" in r.output
    r = runner.invoke(main, ["finetune", "--data", str(folder), "--backbone", TINY, "--no-pretrained",
                             "--image-size", "32", "--unfreeze", "last-99", "-q", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "stages" in r.output


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_reads_last_pt_as_plain_data_and_refuses_others_in_one_line(folder, tmp_path):
    out = tmp_path / "run"
    finetune(load_dataset(folder), FinetuneConfig(**SMALL, epochs=1, checkpoint_every=2), out, progress=False,
             log=lambda m: None)
    st = torch.load(out / "last.pt", weights_only=True)  # tensors and plain values only
    assert st["epoch"] == 1 and isinstance(st["rng"]["numpy"]["state"]["key"], list)
    base = ["finetune", "--data", str(folder), "--backbone", "scratch-cnn", "--width", "8", "--depth", "2",
            "--epochs", "1", "--precision", "fp32", "-q", "--out", str(out), "--resume"]
    marker = tmp_path / "code-ran"
    for bad, says in [({"format": "featpipe-finetune-state", "x": _RunsCodeWhenUnpickled(marker)}, "not loaded"),
                      ({"format": "featpipe-finetune-state", "epoch": 1}, "malformed fine-tune state"),
                      ({**st, "best": {"epoch": 1}}, "best.score")]:
        torch.save(bad, out / "last.pt")
        r = CliRunner().invoke(main, base)
        assert r.exit_code == 2, r.output
        last = r.output.strip().splitlines()[-1]  # after the dataset summary line
        assert last.startswith("error: ") and says in last and "Traceback" not in r.output
    assert not marker.exists()
    (out / "last.pt").write_bytes(b"not a zip")
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 2 and "cannot read" in r.output


def test_stages_listing_and_partial_unfreeze(folder, tmp_path):
    r = CliRunner().invoke(main, ["backbones", "--stages", TINY])
    assert r.exit_code == 0
    stages = r.output.split()
    assert stages[0] == "conv_stem" and "blocks.0" in stages
    # a cut drops the stages after it, also at a module without parameters (VGG's block2_pool)
    from featpipe.backbones._torch import BackboneNet

    net = load_backbone(resolve_spec(TINY, pretrained=False, layer="blocks.1.0", image_size=32),
                        trainable=True).net
    assert [n for n, _ in net.stages()] == ["conv_stem", "blocks.0", "blocks.1"]
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 4, 3))
    vgg_like = torch.nn.Module()
    vgg_like.features = seq
    assert [n for n, _ in BackboneNet(vgg_like, "features.1").stages()] == ["features.0"]
    from featpipe.finetune._train import _Run

    m = load_dataset(folder)
    cfg = FinetuneConfig(backbone=TINY, pretrained=False, image_size=32, unfreeze="last-1", recipe="ft",
                         precision="fp32")
    run = _Run(m, cfg, tmp_path / "x", lambda s: None, False)
    run.build()
    last_name, last = run.net.backbone.stages()[-1]
    assert last_name == stages[-1] and last[0] == last_name
    model = run.net.backbone.model
    for name, p in model.named_parameters():
        assert p.requires_grad == any(name.startswith(m + ".") for m in last), name
    from featpipe.finetune._net import set_train_mode

    set_train_mode(run.net, run.prefixes)
    frozen_bn = [m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                 and not any(n.startswith(x) for x in last)]
    assert frozen_bn and not any(b.training for b in frozen_bn)  # frozen BatchNorm statistics stay frozen


def _old_hook_features(model: torch.nn.Module, module_name: str, x: torch.Tensor) -> np.ndarray:
    """The embed code path before the trainable module: hook raises to stop the forward."""
    from featpipe.backbones._torch import pool_features

    class Stop(Exception):
        pass

    got = {}

    def hook(_m, _i, out):
        got["x"] = pool_features(out)
        raise Stop

    h = dict(model.named_modules())[module_name].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(x)
    except Stop:
        pass
    h.remove()
    return got["x"].float().numpy()


@pytest.mark.parametrize(("name", "layer", "module", "key"), [
    (TINY, "blocks.1", "blocks.1", "4fcbcd7c9e716ee521a9e6a80df2ab8c3ac90ca732a6ba88d5cd75be6a1cad72"),
    (TINY, None, None, "d7d8741161bef61a77e92b4ed006f30680c35786efcc838e0514e371738265ff"),
    pytest.param("vgg11", "block2_pool", "features.5",
                 "0dee821c0c7962f2fe687168d95a3799da7397649087cbfae0c8cbe06dca4dc7", marks=pytest.mark.slow),
])
def test_layer_cut_keeps_cache_key_and_features(name, layer, module, key):
    import timm

    spec = resolve_spec(name, pretrained=False, layer=layer, image_size=32)
    bb = load_backbone(spec)
    # keys recorded with the hook-based backbone before the trainable module existed
    assert features_key(bb, "float32")[0] == key
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(spec.seed)
    ref = timm.create_model(spec.arch, pretrained=False, num_classes=0).eval()
    if module is None:
        with torch.inference_mode():
            want = ref(x).float().numpy()
    else:
        want = _old_hook_features(ref, module, x)
    np.testing.assert_allclose(bb.forward(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path):
    folder = make_class_folders(tmp_path / "imgs", {"a": 40, "b": 40, "c": 40}, size=16)
    opts = ["--backbone", "scratch-cnn", "--width", "8", "--depth", "2", "--epochs", "6", "--patience", "50",
            "--batch-size", "4", "--precision", "fp32", "--workers", "0", "--augment", "strong", "-q"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "featpipe", "finetune", "--data", str(folder), *opts,
                             "--checkpoint-every", "3", "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "history.json").exists():
        time.sleep(0.02)
    time.sleep(0.15)  # into the next epoch
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 6
    r = CliRunner().invoke(main, ["finetune", "--data", str(folder), *opts, "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert f"resuming {out} after epoch {done}" in r.output  # (and some steps, if killed past a step checkpoint)
    r = CliRunner().invoke(main, ["finetune", "--data", str(folder), *opts, "--out", str(tmp_path / "whole")])
    assert r.exit_code == 0, r.output
    a = json.loads((out / "history.json").read_text())["epochs"]
    b = json.loads((tmp_path / "whole" / "history.json").read_text())["epochs"]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-6, abs=1e-7)
    sa = torch.load(out / "best.pt", weights_only=True)
    sb = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    for k, v in sa["backbone_state"].items():
        torch.testing.assert_close(v, sb["backbone_state"][k], rtol=1e-5, atol=1e-6)
    za, zb = np.load(out / "predictions.npz"), np.load(tmp_path / "whole" / "predictions.npz")
    np.testing.assert_allclose(za["proba"], zb["proba"], atol=1e-5)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_linear_probe_init_reproduces_the_fitted_head(task):
    """LP-FT starts from the probe: the classifier layer computes the logistic head's probabilities."""
    from featpipe.finetune._net import init_from_linear_probe
    from featpipe.heads import make_head

    from _digits import task_data

    X, y, split, classes = task_data(task, 300)
    tr, va = split == "train", split == "val"
    head = make_head("logistic", task=task, preprocess="standardize", C_grid=(0.1, 1.0), refine_steps=0)
    head.fit(X[tr], y[tr], X[va], y[va], **({} if task == "multilabel" else {"n_classes": len(classes)}))
    fc = torch.nn.Linear(X.shape[1], len(classes)).double()
    init_from_linear_probe(fc, head, task)
    with torch.no_grad():
        z = fc(torch.as_tensor(X[va], dtype=torch.float64))
    got = (torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, 1)).numpy()
    np.testing.assert_allclose(got, head.predict_proba(X[va]), atol=1e-6)


@pytest.mark.slow
def test_report_ranks_finetune_and_fit_head_runs_together(folder, tmp_path):
    import csv

    from featpipe.reporting import build_report

    m = load_dataset(folder)
    runs = tmp_path / "runs"
    finetune(m, FinetuneConfig(**SMALL, epochs=2), runs / "scratch", progress=False, log=lambda s: None)
    res = embed_dataset(m, resolve_spec(TINY, pretrained=False, image_size=32), cache_dir=tmp_path / "cache",
                        progress=False)
    r = CliRunner().invoke(main, ["fit-head", "--cache", str(res.path), "--head", "logistic", "--out", str(runs)])
    assert r.exit_code == 0, r.output
    index = build_report(models_dir=runs, out=tmp_path / "report", analyses=False)
    rows = list(csv.DictReader((tmp_path / "report" / "leaderboard.csv").open()))
    heads = {row["head"] for row in rows}
    assert heads == {"logistic", "finetune-ft"}, rows  # one leaderboard: same dataset, same metric
    assert "scratch" in index.read_text() and any((tmp_path / "report" / "plots").glob("ft-scratch-*.png"))  # the curves


def test_resume_from_a_mid_epoch_checkpoint_equals_uninterrupted(folder, tmp_path, monkeypatch):
    """A crash right after a step checkpoint (not an epoch end) resumes at that exact batch."""
    from featpipe.finetune import _train

    m = load_dataset(folder)
    cfg = FinetuneConfig(**SMALL, epochs=3, patience=9, augment="strong", dropout=0.3, checkpoint_every=2)
    whole = finetune(m, cfg, tmp_path / "whole", progress=False, log=lambda s: None)
    saves = []
    real_save = _train._atomic_save

    def crash_after_a_step_checkpoint(obj, path):
        real_save(obj, path)
        saves.append(obj.get("partial") if isinstance(obj, dict) else None)
        if path.name == "last.pt" and obj.get("epoch") == 1 and obj.get("partial") and obj["partial"]["step"] == 2:
            raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(_train, "_atomic_save", crash_after_a_step_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        finetune(m, cfg, tmp_path / "crashed", progress=False, log=lambda s: None)
    monkeypatch.setattr(_train, "_atomic_save", real_save)
    msgs = []
    resumed = finetune(m, cfg, tmp_path / "crashed", resume=True, progress=False, log=msgs.append)
    assert any("after epoch 1 and 2 steps of epoch 2" in s for s in msgs), msgs
    a, b = resumed.history["epochs"], whole.history["epochs"]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(np.load(tmp_path / "crashed" / "predictions.npz")["proba"],
                               np.load(tmp_path / "whole" / "predictions.npz")["proba"], atol=1e-5)
