"""Embedding engine and feature cache: reuse, resume, staleness, locking, bad images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featpipe.backbones import resolve_spec
from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import BackboneError, CacheError
from featpipe.features.cache import FAILED, OK, FeatureCache, write_lock
from featpipe.features.embed import embed_dataset, embed_paths

from conftest import TINY, TINY_SIZE, make_class_folders


def _embed(folder: Path, spec, cache_dir: Path, **kw):
    return embed_dataset(load_dataset(folder), spec, cache_dir=cache_dir, progress=False, **kw)


def test_embed_writes_complete_cache_readable_with_plain_h5py(image_folder, tiny_spec, tmp_path):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert res.n_computed == 36 and res.n_failed == 0
    with h5py.File(res.path, "r") as f:  # the schema documented in docs/features.md
        assert f["features"].shape[0] == 36
        assert set(f["status"][...]) == {OK}
        assert f.attrs["completed"]
        for name in ("ids", "paths", "split", "labels", "labeled", "content_hash", "error", "size", "mtime_ns"):
            assert name in f
        for attr in ("key", "config", "backbone", "dataset", "classes", "versions", "seed", "timings"):
            assert attr in f.attrs
    c = FeatureCache.open(res.path)
    assert c.classes == ["cat", "dog", "fox"] and c.task == "multiclass"
    assert set(c.splits) == {"train", "val", "test"}
    assert np.abs(c.features).sum(axis=1).min() > 0


def test_second_run_reuses_everything_and_added_images_only_embed_new(image_folder, tiny_spec, tmp_path):
    first = _embed(image_folder, tiny_spec, tmp_path / "cache")
    before = FeatureCache.open(first.path)
    again = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert (again.n_computed, again.n_reused) == (0, 36)
    for k in range(3):  # three new photos of an existing class
        Image.new("RGB", (16, 16), (10 * k, 200, 30)).save(image_folder / "cat" / f"new{k}.png")
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert res.n_computed == 3 and res.n_reused == 36
    after = FeatureCache.open(res.path)
    assert res.path == first.path
    old = dict(zip(before.ids, before.features, strict=True))
    for i, f in zip(after.ids, after.features, strict=True):
        if i in old:
            np.testing.assert_array_equal(old[i], f)


def test_changed_image_bytes_are_recomputed(image_folder, tiny_spec, tmp_path):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    target = image_folder / "dog" / "003.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(target)
    res2 = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert res2.n_computed == 1 and res2.n_reused == 35
    c = FeatureCache.open(res.path)
    row = list(c.ids).index("dog/003")
    fresh, ok, _ = embed_paths(tiny_spec, [target], device="cpu")
    assert ok[0]
    np.testing.assert_allclose(c.features[row], fresh[0], rtol=1e-4, atol=1e-6)
    os.utime(target, ns=(1, 1))  # same bytes, new mtime: nothing to recompute
    assert _embed(image_folder, tiny_spec, tmp_path / "cache").n_computed == 0


def test_bad_images_are_recorded_as_failed_rows(image_folder, tiny_spec, tmp_path):
    (image_folder / "cat" / "empty.jpg").write_bytes(b"")
    (image_folder / "dog" / "notes.jpg").write_text("this is text, not a JPEG")
    good = image_folder / "fox" / "000.png"
    buf = good.read_bytes()
    jpg = image_folder / "fox" / "cut.jpg"
    Image.open(good).save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    assert res.n_failed == 3
    reasons = dict(res.failures)
    assert "empty" in reasons["cat/empty"]
    assert "not an image" in reasons["dog/notes"]
    assert "truncated" in reasons["fox/cut"].lower()
    c = FeatureCache.open(res.path)
    assert int((c.status == FAILED).sum()) == 3 and int(c.ok.sum()) == 36
    assert not c.features[c.status == FAILED].any()
    assert good.read_bytes() == buf
    # failed rows whose bytes did not change are not retried on every run
    assert _embed(image_folder, tiny_spec, tmp_path / "cache").n_computed == 0


def test_other_backbone_config_never_reuses_a_cache(image_folder, tiny_spec, tmp_path):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    other = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE + 8)
    res2 = _embed(image_folder, other, tmp_path / "cache")
    assert res2.path != res.path and res2.n_computed == 36
    with pytest.raises(CacheError, match="another backbone config"):
        _embed(image_folder, other, tmp_path / "cache", cache_file=res.path)
    forced = _embed(image_folder, other, tmp_path / "cache", cache_file=res.path, force=True)
    assert forced.n_computed == 36


def test_changed_weights_file_gives_a_new_key(image_folder, tmp_path):
    import timm

    wfile = tmp_path / "w.pt"
    torch.manual_seed(1)
    torch.save(timm.create_model(TINY, num_classes=0).state_dict(), wfile)
    spec1 = resolve_spec(TINY, weights=wfile, image_size=TINY_SIZE)
    r1 = _embed(image_folder, spec1, tmp_path / "cache")
    torch.manual_seed(2)
    torch.save(timm.create_model(TINY, num_classes=0).state_dict(), wfile)
    spec2 = resolve_spec(TINY, weights=wfile, image_size=TINY_SIZE)
    assert spec1.weights_id != spec2.weights_id
    r2 = _embed(image_folder, spec2, tmp_path / "cache")
    assert r2.key != r1.key and r2.n_computed == 36
    with pytest.raises(BackboneError, match="changed since it was recorded"):
        embed_paths(spec1, [image_folder / "cat" / "000.png"])


def test_weights_file_loads_into_the_architecture(tmp_path, image_folder):
    import timm

    torch.manual_seed(5)
    torch.save({"state_dict": timm.create_model(TINY, num_classes=0).state_dict()}, tmp_path / "w.pt")
    from_file = resolve_spec(TINY, weights=tmp_path / "w.pt", image_size=TINY_SIZE)
    random5 = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, seed=5)
    imgs = sorted((image_folder / "cat").glob("*.png"))[:4]
    a, _, _ = embed_paths(from_file, imgs)
    b, _, _ = embed_paths(random5, imgs)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    with pytest.raises(BackboneError, match="do not fit"):
        embed_paths(resolve_spec(TINY, weights=bad), imgs)


def test_second_writer_gets_a_clear_error(image_folder, tiny_spec, tmp_path):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    code = (
        "import sys, time; from pathlib import Path; from featpipe.features.cache import write_lock\n"
        f"with write_lock(Path({str(res.path)!r})):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match="being written by another featpipe process"):
            _embed(image_folder, tiny_spec, tmp_path / "cache", force=True)
    finally:
        holder.kill()
        holder.wait()
    assert FeatureCache.open(res.path).ok.all()  # untouched by the refused writer
    with write_lock(res.path):  # released when the holder died
        pass


def _ok_rows(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int((f["status"][...] == OK).sum())
    except (OSError, KeyError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    folder = make_class_folders(tmp_path / "imgs", {"a": 150, "b": 150}, size=24)
    cache_dir = tmp_path / "cache"
    cmd = [sys.executable, "-m", "featpipe", "embed", "--data", str(folder), "--backbone", TINY,
           "--no-pretrained", "--image-size", "96", "--batch-size", "2", "--workers", "0",
           "--cache-dir", str(cache_dir), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + ["--write-every", "4"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    h5 = None
    while time.time() < deadline and proc.poll() is None:
        files = list(cache_dir.glob("*.h5"))
        if files and _ok_rows(files[0]) >= 40:
            h5 = files[0]
            break
        time.sleep(0.05)
    assert h5 is not None, "embedding finished or never started before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _ok_rows(h5)
    assert 0 < done_at_kill < 300
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache.open(h5)
    spec = resolve_spec(TINY, pretrained=False, image_size=96)
    resumed = embed_dataset(load_dataset(folder), spec, cache_dir=cache_dir, progress=False, batch_size=16)
    assert resumed.path == h5
    assert resumed.n_reused >= done_at_kill and resumed.n_computed == 300 - resumed.n_reused
    fresh = embed_dataset(load_dataset(folder), spec, cache_dir=tmp_path / "fresh", progress=False, batch_size=16)
    a, b = FeatureCache.open(h5), FeatureCache.open(fresh.path)
    assert list(a.ids) == list(b.ids) and a.ok.all()
    np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-6)


def test_hub_backbone_offline_fails_fast_with_options(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATPIPE_OFFLINE", "1")
    t = time.perf_counter()
    result = CliRunner().invoke(main, ["embed", "--data", str(image_folder), "--backbone", "vgg16",
                                       "--cache-dir", str(tmp_path / "c"), "-q"])
    assert time.perf_counter() - t < 20
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: pretrained weights for 'vgg16'")
    for option in ("--weights FILE", "--no-pretrained", "efficientnet_lite0"):
        assert option in line
    assert "Traceback" not in result.output


def test_unknown_backbone_and_missing_data_are_one_line_errors(image_folder, tmp_path):
    r = CliRunner().invoke(main, ["embed", "--data", str(image_folder), "--backbone", "no_such_net"])
    assert r.exit_code == 2 and "unknown backbone 'no_such_net'" in r.output
    r = CliRunner().invoke(main, ["embed", "--data", str(tmp_path / "nope"), "--backbone", TINY])
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output


def test_layer_cut_pools_an_intermediate_stage(image_folder):
    spec = resolve_spec("vgg11", pretrained=False, image_size=32, layer="block4_pool")
    feats, ok, _ = embed_paths(spec, sorted((image_folder / "cat").glob("*.png"))[:2])
    assert ok.all() and feats.shape == (2, 512)
    with pytest.raises(BackboneError, match="not found"):
        embed_paths(resolve_spec("vgg11", pretrained=False, image_size=32, layer="block9_pool"), [])


def test_npz_arrays_embed_like_images(tmp_path, tiny_spec):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (30, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(30) % 3
    np.savez(tmp_path / "arr.npz", images=images, labels=labels)
    res = embed_dataset(load_dataset(tmp_path / "arr.npz"), tiny_spec, cache_dir=tmp_path / "c", progress=False)
    assert res.n_computed == 30 and res.n_failed == 0
    assert embed_dataset(load_dataset(tmp_path / "arr.npz"), tiny_spec, cache_dir=tmp_path / "c",
                         progress=False).n_computed == 0


def test_sface_onnx_backbone_gives_128d_face_embeddings(tmp_path):
    from skimage import data

    face = Image.fromarray(data.astronaut()).crop((150, 30, 270, 170))
    face.save(tmp_path / "face.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    feats, ok, _ = embed_paths(resolve_spec("sface"), [tmp_path / "face.png", tmp_path / "coffee.png"])
    assert ok.all() and feats.shape == (2, 128)
    assert not np.allclose(feats[0], feats[1])


def test_default_backbone_carries_real_imagenet_weights():
    """The packaged weights classify real photos correctly with the full timm classifier."""
    import timm
    from skimage import data

    from featpipe.backbones import load_backbone
    from featpipe.backbones._registry import _load_weights

    spec = resolve_spec("efficientnet_lite0")
    assert spec.weights == "package"
    backbone = load_backbone(spec)
    full = timm.create_model(spec.arch, pretrained=False)
    _load_weights(full, spec)
    full.eval()
    x = torch.stack([backbone.preprocess(Image.fromarray(data.chelsea())),
                     backbone.preprocess(Image.fromarray(data.coffee()))])
    with torch.inference_mode():
        top = full(x).argmax(1).tolist()
    assert 281 <= top[0] <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top[1] in (967, 968, 504)  # espresso, cup, coffee mug
    feats = backbone.forward(x)
    assert feats.shape == (2, 1280)


def test_cache_ls_and_info(image_folder, tiny_spec, tmp_path):
    res = _embed(image_folder, tiny_spec, tmp_path / "cache")
    r = CliRunner().invoke(main, ["cache", "ls", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0 and res.path.name in r.output and "complete" in r.output
    r = CliRunner().invoke(main, ["cache", "info", str(res.path)])
    assert r.exit_code == 0 and res.key in r.output and "test_efficientnet" in r.output
    r = CliRunner().invoke(main, ["cache", "info", str(tmp_path / "missing.h5")])
    assert r.exit_code == 2 and "not found" in r.output


def test_backbones_command_marks_offline_ones():
    r = CliRunner().invoke(main, ["backbones"])
    assert r.exit_code == 0
    rows = {line.split()[0]: line.split()[1] for line in r.output.splitlines()[1:]}
    assert rows["efficientnet_lite0"] == "yes" and rows["sface"] == "yes"
    assert rows["vgg16"] == "no"


def test_any_onnx_file_is_a_feature_extractor(tmp_path, image_folder):
    import warnings

    import timm

    from featpipe.backbones import load_backbone

    torch.manual_seed(0)
    model = timm.create_model(TINY, num_classes=0).eval()
    onnx_file = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 32, 32), onnx_file, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    spec = resolve_spec(str(onnx_file))
    assert spec.kind == "onnx" and spec.weights_id.startswith("sha256:")
    backbone = load_backbone(spec)
    assert backbone.preprocessing["input_size"] == [3, 32, 32] and backbone.feature_dim == model.num_features
    x = torch.stack([backbone.preprocess(Image.open(p).convert("RGB"))
                     for p in sorted((image_folder / "dog").glob("*.png"))[:3]])
    with torch.inference_mode():
        np.testing.assert_allclose(backbone.forward(x), model(x).numpy(), rtol=1e-4, atol=1e-5)
    res = _embed(image_folder, spec, tmp_path / "cache")
    assert res.n_computed == 36 and res.n_failed == 0
    with pytest.raises(BackboneError, match="ONNX file not found"):
        resolve_spec(str(tmp_path / "missing.onnx"))


def test_precision_auto_is_bf16_on_cuda_only_and_part_of_the_key():
    assert resolve_spec(TINY, pretrained=False, precision="auto", device="cpu").precision == "fp32"
    assert resolve_spec(TINY, pretrained=False, precision="auto", device="cuda").precision == "bf16"
    assert resolve_spec("sface", precision="auto", device="cuda").precision == "fp32"
    from featpipe.backbones import load_backbone

    a = load_backbone(resolve_spec(TINY, pretrained=False, image_size=32))
    b = load_backbone(resolve_spec(TINY, pretrained=False, image_size=32, precision="bf16"))
    assert a.key() != b.key()
    x = torch.rand(2, 3, 32, 32)
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=0.1, atol=0.02)
