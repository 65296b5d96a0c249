"""Several backbones per decode, the uint8 input path, precision auto, and a CLI that starts without torch."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featpipe.backbones import load_backbone, resolve_spec, split_layer
from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import BackboneError, FeaturepipeError
from featpipe.features.embed import embed_dataset, embed_datasets

from conftest import TINY, TINY_SIZE


def _features(path):
    with h5py.File(path, "r") as f:
        return f["features"][...], f["status"][...], f.attrs["key"]


def test_several_backbones_in_one_pass_equal_separate_embeds(image_folder, tmp_path):
    bad = image_folder / "cat" / "broken.png"
    bad.write_bytes(b"not an image")
    big = image_folder / "dog" / "big.jpg"  # a JPEG large enough to be draft-decoded
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(big)
    specs = [
        resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE),
        resolve_spec(TINY, pretrained=False, image_size=48),  # another geometry and decode size
        resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, layer="conv_stem"),  # same geometry
    ]
    manifest = load_dataset(image_folder)
    together = embed_datasets(manifest, specs, cache_dir=tmp_path / "multi", progress=False, batch_size=5)
    assert len({r.path for r in together}) == 3
    for spec, res in zip(specs, together, strict=True):
        alone = embed_dataset(manifest, spec, cache_dir=tmp_path / "single", progress=False, batch_size=7,
                              num_workers=0)
        fa, sa, ka = _features(alone.path)
        fb, sb, kb = _features(res.path)
        assert ka == kb and res.path.name == alone.path.name
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
        assert res.n_failed == 1 and res.n_computed == len(manifest)
        assert res.failures[0][0] == "cat/broken"
    # a second pass finds every cache complete; a new backbone alongside embeds only for itself
    extra = resolve_spec(TINY, pretrained=False, image_size=40)
    again = embed_datasets(manifest, [*specs, extra], cache_dir=tmp_path / "multi", progress=False)
    assert [r.n_computed for r in again] == [0, 0, 0, len(manifest)]
    with pytest.raises(FeaturepipeError, match="given twice"):
        embed_datasets(manifest, [specs[0], specs[0]], cache_dir=tmp_path / "multi", progress=False)


def test_cli_embeds_several_backbones_with_name_at_layer(image_folder, tmp_path):
    args = ["embed", "--data", str(image_folder), "--cache-dir", str(tmp_path / "c"), "--no-pretrained",
            "--image-size", str(TINY_SIZE), "--backbone", TINY, "--backbone", f"{TINY}@conv_stem", "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    caches = sorted((tmp_path / "c").glob("*.h5"))
    assert len(caches) == 2 and any("@conv_stem" in c.name for c in caches)
    assert r.output.count("embedded 36 images") == 2
    r = CliRunner().invoke(main, [*args, "--layer", "conv_stem"])
    assert r.exit_code == 2 and "NAME@LAYER" in r.output


def test_split_layer():
    assert split_layer("vgg16@block4_pool") == ("vgg16", "block4_pool")
    assert split_layer("resnet50") == ("resnet50", None)
    assert split_layer("/models/a@b.onnx") == ("/models/a@b.onnx", None)
    with pytest.raises(BackboneError, match="NAME@LAYER"):
        split_layer("vgg16@")


def test_uint8_batches_give_the_float_path_features():
    backbone = load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(3)]
    floats = backbone.forward(torch.stack([backbone.preprocess(im) for im in imgs]))
    uint8 = backbone.forward(torch.from_numpy(np.stack([backbone.geometry(im) for im in imgs])))
    np.testing.assert_allclose(floats, uint8, rtol=1e-4, atol=1e-6)


def test_precision_auto_follows_native_cpu_bf16(monkeypatch):
    monkeypatch.setenv("FEATPIPE_CPU_BF16", "1")
    assert resolve_spec(TINY, pretrained=False, precision="auto", device="cpu").precision == "bf16"
    assert resolve_spec("sface", precision="auto", device="cpu").precision == "fp32"  # ONNX: fp32 only
    monkeypatch.setenv("FEATPIPE_CPU_BF16", "0")
    assert resolve_spec(TINY, pretrained=False, precision="auto", device="cpu").precision == "fp32"
    assert resolve_spec(TINY, pretrained=False, precision="auto", device="cuda").precision == "bf16"


def test_cli_starts_without_torch_timm_or_sklearn():
    code = ("import sys, featpipe.cli; heavy = [m for m in ('torch', 'timm', 'sklearn', 'lightgbm') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    # choices of --head are still checked (read from featpipe.heads when needed)
    r = CliRunner().invoke(main, ["fit-head", "--head", "nope", "--cache", "x.h5"])
    assert r.exit_code == 2 and "logistic" in r.output


@pytest.mark.parametrize("workers,mode", [(2, "slices"), (3, "processes"), (1, "processes")])
def test_decode_modes_give_the_inline_batches(image_folder, workers, mode):
    from featpipe.features.embed import _decoded_batches, _Decoder

    (image_folder / "cat" / "broken.png").write_bytes(b"not an image")
    manifest = load_dataset(image_folder)
    decoder = _Decoder([load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))],
                       manifest.paths, manifest.array)
    rows = np.arange(len(manifest))[::-1].copy()
    inline = list(_decoded_batches(decoder, rows, 5, 0, "slices"))
    other = list(_decoded_batches(decoder, rows, 5, workers, mode))
    assert [list(b.rows) for b in other] == [list(b.rows) for b in inline]
    for a, b in zip(inline, other, strict=True):
        assert list(a.status) == list(b.status) and a.errors == b.errors and a.hashes == b.hashes
        assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    from featpipe.features.cache import FAILED

    assert sum(int((b.status == FAILED).sum()) for b in other) == 1
