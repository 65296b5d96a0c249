"""Resizing and JPEG decoding on the model's device (``--decode device|device-jpeg``), run on CPU:
PIL's pixels bit for bit, the CPU path's caches, the same failed rows."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.backbones._resample import pil_resize
from featpipe.backbones._torch import uint8_split
from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import FeaturepipeError
from featpipe.features.cache import FAILED, OK, features_key
from featpipe.features.decode import decode_jpegs, resolve_decode, uses_nvjpeg
from featpipe.features.embed import _decoded_batches, _Decoder, embed_datasets

from conftest import TINY, TINY_SIZE

FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR, "hamming": Image.Resampling.HAMMING,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: every resampling difference shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) * 127 / max(h + w, 1)], -1)
    return np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_tensor_resize_is_pils_bit_for_bit():
    rng = np.random.default_rng(0)
    # upscales, downscales, one axis only, and shrinking the height much more than the width (Pillow 13
    # runs the vertical pass first there)
    cases = [((32, 32), (256, 256)), ((60, 20), (20, 18)), ((13, 90), (40, 17)), ((50, 40), (50, 77)),
             ((37, 41), (11, 41)), ((200, 30), (9, 29))]
    cases += [(tuple(int(v) for v in rng.integers(2, 90, 2)), tuple(int(v) for v in rng.integers(2, 90, 2)))
              for _ in range(8)]
    for k, ((h, w), (oh, ow)) in enumerate(cases):
        arr = _photo(h, w, k)
        for name, flt in FILTERS.items():
            ref = np.asarray(Image.fromarray(arr).resize((ow, oh), flt))
            got = pil_resize(torch.from_numpy(arr).permute(2, 0, 1)[None], (oh, ow), name)[0]
            np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), ref, err_msg=f"{name} {h}x{w}->{oh}x{ow}")


@pytest.mark.parametrize("config", [
    {"interpolation": "bicubic", "crop_pct": 0.875},
    {"interpolation": "bilinear", "crop_pct": 0.875},
    {"interpolation": "lanczos", "crop_pct": 1.0},
    {"interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "squash"},
    {"interpolation": "bilinear", "crop_pct": 1.2},  # resized smaller than the crop: zero padding
])
def test_tensor_geometry_gives_the_pil_geometry(config):
    from timm.data import create_transform

    cfg = {"input_size": (3, 40, 40), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_mode": "center", **config}
    transform = create_transform(**cfg, is_training=False)
    geometry, tensor_geometry, _, _ = uint8_split(transform, {"mean": list(cfg["mean"]), "std": list(cfg["std"])},
                                                   "cpu")
    assert tensor_geometry is not None
    for k, (h, w) in enumerate([(32, 32), (17, 60), (90, 45), (300, 220)]):
        arr = _photo(h, w, k)
        out = tensor_geometry(torch.from_numpy(np.stack([arr, arr[::-1].copy()])).permute(0, 3, 1, 2))
        np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), geometry(Image.fromarray(arr)))
        np.testing.assert_array_equal(out[1].permute(1, 2, 0).numpy(), geometry(Image.fromarray(arr[::-1].copy())))


def test_no_tensor_geometry_without_an_exact_tensor_form():
    from timm.data import create_transform

    for config in ({"interpolation": "nearest", "crop_mode": "center"}, {"interpolation": "bicubic", "crop_mode": "border"}):
        cfg = {"input_size": (3, 40, 40), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875, **config}
        _, tensor_geometry, _, _ = uint8_split(create_transform(**cfg, is_training=False),
                                                {"mean": [0.5] * 3, "std": [0.5] * 3}, "cpu")
        assert tensor_geometry is None


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _garbled(jpeg: bytes) -> bytes:
    """Header and end marker intact, entropy-coded data broken (both decoders refuse this one)."""
    out = bytearray(jpeg)
    out[len(jpeg) // 2: len(jpeg) // 2 + 40] = np.random.default_rng(0).integers(0, 255, 40, np.uint8).tobytes()
    return bytes(out)


@pytest.fixture
def odd_folder(tmp_path):
    """One class folder of every kind of file the device path must route right."""
    d = tmp_path / "imgs"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True)
        for k in range(5):
            (d / c / f"plain{k}.jpg").write_bytes(_jpeg(_photo(20 + 3 * k, 28 - k, k + (c == "b") * 10)))
    a = d / "a"
    (a / "gray.jpg").write_bytes(_jpeg(_photo(30, 24, 1)[..., 0]))
    (a / "big.jpg").write_bytes(_jpeg(_photo(300, 400, 2)))  # PIL decodes it at 1/8 or 1/4 scale (draft)
    (a / "progressive.jpg").write_bytes(_jpeg(_photo(26, 30, 3), progressive=True))
    cmyk = io.BytesIO()
    Image.fromarray(_photo(22, 26, 4)).convert("CMYK").save(cmyk, "JPEG")
    (a / "cmyk.jpg").write_bytes(cmyk.getvalue())
    img = Image.fromarray(_photo(24, 36, 5))
    exif = img.getexif()
    exif[0x0112] = 6  # rotated: PIL turns it upright
    rotated = io.BytesIO()
    img.save(rotated, "JPEG", exif=exif)
    (a / "rotated.jpg").write_bytes(rotated.getvalue())
    Image.fromarray(_photo(25, 25, 6)).save(a / "png.png")
    good = _jpeg(np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8))
    (a / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (a / "garbled.jpg").write_bytes(_garbled(good))
    (a / "text.jpg").write_text("not an image")
    return d


def test_device_jpegs_are_only_the_plain_ones(odd_folder):
    manifest = load_dataset(odd_folder)
    decoder = _Decoder([load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))],
                       manifest.paths, manifest.array, "device-jpeg")
    batch = decoder.decode(np.arange(len(manifest)))
    to_device = sorted(manifest.ids[int(batch.rows[r])] for r in batch.jpegs.rows)
    assert to_device == sorted([f"{c}/plain{k}" for c in "ab" for k in range(5)] + ["a/gray", "a/garbled"])
    decoder.finish(batch)  # the garbled file is refused on the device, then by PIL: a failed row
    failed = {manifest.ids[int(r)]: e for r, s, e in zip(batch.rows, batch.status, batch.errors, strict=True)
              if s == FAILED}
    assert set(failed) == {"a/garbled", "a/truncated", "a/text"}
    assert "broken data stream" in failed["a/garbled"] and "truncated" in failed["a/truncated"].lower()
    garbled = (odd_folder / "a" / "garbled.jpg").read_bytes()
    assert decode_jpegs([torch.frombuffer(bytearray(garbled), dtype=torch.uint8)], "cpu") == [None]  # PIL judged it


def test_device_mode_resizes_there_only_images_smaller_than_the_input(odd_folder):
    manifest = load_dataset(odd_folder)
    decoder = _Decoder([load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))],
                       manifest.paths, manifest.array, "device")
    batch = decoder.decode(np.arange(len(manifest)))
    (small,), (large,) = batch.pixels.values(), batch.resized.values()
    assert [manifest.ids[int(batch.rows[r])] for r in large.rows] == ["a/big"]  # 50x38 after PIL's draft
    assert len(small.rows) == len(manifest) - 4 and batch.jpegs is None and not batch.inputs  # 3 failed
    decoder.finish(batch)
    assert batch.inputs[decoder.keys[0]].shape == (len(manifest), TINY_SIZE, TINY_SIZE, 3)


@pytest.mark.slow
def test_device_decode_writes_the_cpu_caches(odd_folder, tmp_path):
    manifest = load_dataset(odd_folder)
    specs = [resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE),
             resolve_spec(TINY, pretrained=False, image_size=48)]  # another size, another draft of big.jpg

    def caches(decode):
        res = embed_datasets(manifest, specs, cache_dir=tmp_path / decode, progress=False, batch_size=8, decode=decode)
        out = []
        for r in res:
            with h5py.File(r.path, "r") as f:
                assert f.attrs["completed"] and set(f["status"][...]) <= {OK, FAILED}
                out.append((r.path.name, f["features"][...], f["status"][...], list(f["error"][...])))
        return out

    ref = caches("cpu")
    for decode in ("device", "device-jpeg"):
        for (name, feats, status, errors), (rname, rfeats, rstatus, rerrors) in zip(caches(decode), ref, strict=True):
            assert name == rname  # the same cache key
            np.testing.assert_array_equal(status, rstatus)
            assert errors == rerrors
            np.testing.assert_array_equal(feats, rfeats)  # the same pixels, so the same features
    assert int((ref[0][2] == FAILED).sum()) == 3
    # from the command line, with a decoder process (batches cross a process boundary)
    r = CliRunner().invoke(main, ["embed", "--data", str(odd_folder), "--cache-dir", str(tmp_path / "cli"),
                                  "--no-pretrained", "--image-size", str(TINY_SIZE), "--backbone", TINY, "-q",
                                  "--decode", "device-jpeg", "--workers", "2", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    assert f"embedded {len(manifest)} images" in r.output and "failed 3" in r.output
    (path,) = (tmp_path / "cli").glob("*.h5")
    assert path.name == ref[0][0]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["features"][...], ref[0][1])


def test_array_datasets_resize_on_the_device_like_pil(tmp_path):
    from featpipe.data import from_npz

    x = np.stack([_photo(12, 14, k) for k in range(6)])
    np.savez(tmp_path / "arr.npz", images=x, labels=np.arange(6) % 2)
    manifest = from_npz(tmp_path / "arr.npz")
    backbone = load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))
    got = {}
    for mode in ("cpu", "device"):
        decoder = _Decoder([backbone], manifest.paths, manifest.array, mode)
        got[mode] = decoder.finish(decoder.decode(np.arange(len(manifest)))).inputs[decoder.keys[0]]
    assert torch.equal(got["cpu"], got["device"]) and got["cpu"].abs().sum() > 0


@pytest.mark.slow
def test_decode_processes_carry_packed_pixels(odd_folder):
    manifest = load_dataset(odd_folder)
    decoder = _Decoder([load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))],
                       manifest.paths, manifest.array, "device")
    rows = np.arange(len(manifest))
    inline = list(_decoded_batches(decoder, rows, 6, 0, "slices"))
    forked = list(_decoded_batches(decoder, rows, 6, 2, "processes"))
    for a, b in zip(inline, forked, strict=True):
        assert list(a.status) == list(b.status) and a.errors == b.errors
        assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)


def test_decode_modes_resolve_and_refuse_in_one_line():
    tiny = load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE))
    assert resolve_decode("auto", [tiny]) == "cpu"  # a CPU model: PIL resizes in the decoders
    assert resolve_decode("device", [tiny]) == "device"
    aligned = load_backbone(resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, align="faces"))
    assert resolve_decode("auto", [tiny, aligned]) == "cpu"
    with pytest.raises(FeaturepipeError, match="cannot resize on the device"):
        resolve_decode("device", [tiny, aligned])
    with pytest.raises(FeaturepipeError, match="unknown decode mode"):
        resolve_decode("gpu", [tiny])
    # nvJPEG's pixels are not PIL's: only then does the cache key change
    assert uses_nvjpeg("device-jpeg", "cuda:0") and not uses_nvjpeg("device-jpeg", "cpu")
    assert not uses_nvjpeg("device", "cuda")
    assert features_key(tiny, "float32", nvjpeg=True)[0] != features_key(tiny, "float32")[0]


def test_ray_engine_refuses_device_decode(image_folder, tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(FeaturepipeError, match="for the local engine"):
        embed_datasets(load_dataset(image_folder), [resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)],
                       cache_dir=tmp_path, engine="ray", decode="device", progress=False)


def test_cli_refuses_device_decode_for_aligned_faces(image_folder, tmp_path):
    r = CliRunner().invoke(main, ["embed", "--data", str(image_folder), "--cache-dir", str(tmp_path), "-q",
                                  "--no-pretrained", "--backbone", TINY, "--align", "faces", "--decode", "device"])
    assert r.exit_code == 2 and "cannot resize on the device" in r.output
    assert "Traceback" not in r.output


def test_decode_jpegs_gives_none_for_refused_files():
    good = _jpeg(_photo(20, 30, 0))
    files = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (good, b"\xff\xd8\xff" + b"x" * 50, good)]
    out = decode_jpegs(files, "cpu")
    assert out[1] is None and out[0] is not None and out[2] is not None
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(io.BytesIO(good))))
