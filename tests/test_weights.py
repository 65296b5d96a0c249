"""--weights state dicts: torchvision and timm layouts mapped by name; Keras VGGFace conversion."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.errors import BackboneError

SIZE = 64  # small inputs keep VGG16 on CPU fast; both VGGs pool the 2x2 map up to 7x7 the same way


def _batch(seed: int = 0, n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: np.ndarray, b: torch.Tensor) -> None:
    b = b.detach().numpy()
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


@pytest.fixture(scope="module")
def torchvision_vgg16(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(3)
    net = torchvision.models.vgg16().eval()
    path = tmp_path_factory.mktemp("tv") / "vgg16_tv.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.slow
def test_torchvision_vgg16_state_dict_gives_torchvision_fc7_features(torchvision_vgg16):
    net, path = torchvision_vgg16
    backbone = load_backbone(resolve_spec("vgg16", weights=path, image_size=SIZE))
    x = _batch()
    with torch.inference_mode():
        fc7 = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1))  # fc6, relu, drop, fc7, relu
    _close(backbone.forward(x), fc7)
    assert backbone.feature_dim == 4096


def test_torchvision_resnet18_state_dict_gives_torchvision_pooled_features(tmp_path):
    torch.manual_seed(4)
    net = torchvision.models.resnet18().eval()
    for m in net.modules():  # non-trivial running statistics, so a mis-assigned BN tensor shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "r18.pth")
    backbone = load_backbone(resolve_spec("resnet18", weights=tmp_path / "r18.pth", image_size=SIZE))
    net.fc = torch.nn.Identity()
    x = _batch(1)
    with torch.inference_mode():
        _close(backbone.forward(x), net(x))
    # the key order of the file does not matter, only the names
    items = list(net.state_dict().items())
    random.Random(0).shuffle(items)
    torch.save(dict(items), tmp_path / "shuffled.pth")
    shuffled = load_backbone(resolve_spec("resnet18", weights=tmp_path / "shuffled.pth", image_size=SIZE))
    with torch.inference_mode():
        _close(shuffled.forward(x), net(x))


def test_timm_layout_with_its_classifier_loads_by_name(tmp_path):
    """timm's own names (the same map for every architecture); the classifier is dropped."""
    import timm

    torch.manual_seed(6)
    full = timm.create_model("resnet18", num_classes=10).eval()
    torch.save(full.state_dict(), tmp_path / "r18_timm.pth")
    backbone = load_backbone(resolve_spec("resnet18", weights=tmp_path / "r18_timm.pth", image_size=SIZE))
    x = _batch(2)
    with torch.inference_mode():
        _close(backbone.forward(x), full.forward_head(full.forward_features(x), pre_logits=True))


def test_renamed_keys_are_refused_with_a_line_naming_them(tmp_path):
    torch.manual_seed(4)
    sd = torchvision.models.resnet18().state_dict()
    # every key renamed: the old loader mapped such files by position, silently
    torch.save({"backbone." + k: v for k, v in sd.items()}, tmp_path / "renamed.pth")
    with pytest.raises(BackboneError) as e:
        load_backbone(resolve_spec("resnet18", weights=tmp_path / "renamed.pth", image_size=SIZE))
    msg = str(e.value)
    assert "\n" not in msg and "unmatched keys in the file: backbone.conv1.weight" in msg
    # one stray key is named too
    torch.save({**sd, "layer9.0.conv1.weight": sd["conv1.weight"]}, tmp_path / "stray.pth")
    with pytest.raises(BackboneError, match=r"unmatched keys in the file: layer9\.0\.conv1\.weight"):
        load_backbone(resolve_spec("resnet18", weights=tmp_path / "stray.pth", image_size=SIZE))
    # a tensor of the wrong shape under the right name
    torch.save({**sd, "fc.weight": sd["fc.weight"], "conv1.weight": sd["conv1.weight"][:, :1]},
               tmp_path / "shape.pth")
    with pytest.raises(BackboneError, match=r"wrong shapes: conv1\.weight"):
        load_backbone(resolve_spec("resnet18", weights=tmp_path / "shape.pth", image_size=SIZE))


@pytest.mark.slow
def test_convolutions_only_vgg_file_needs_a_cut_inside_the_convolutions(tmp_path):
    torch.manual_seed(7)
    net = torchvision.models.vgg11().eval()
    torch.save(net.features.state_dict(prefix="features."), tmp_path / "notop.pth")
    with pytest.raises(BackboneError, match="convolutions-only file.*--layer block5_pool"):
        load_backbone(resolve_spec("vgg11", weights=tmp_path / "notop.pth", image_size=SIZE))
    cut = load_backbone(resolve_spec("vgg11", weights=tmp_path / "notop.pth", image_size=SIZE,
                                     layer="block5_pool"))
    x = _batch(3)
    with torch.inference_mode():
        _close(cut.forward(x), net.features(x).mean(dim=(2, 3)))


# --- Keras VGG (.h5) conversion ------------------------------------------------------------------

SMALL_VGG16 = [4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 16, 16, 16, "M", 16, 16, 16, "M"]  # vgg16's blocks


def _write_keras_h5(path: Path, cfg: list, dense: tuple[int, ...] = (), *, names: str = "vggface",
                    model_save: bool = False, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A Keras 2 weights file as keras-vggface / Keras write it (h5py only); returns the weights."""
    import h5py

    rng = np.random.default_rng(seed)
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    layer_names, block, conv, ch = ["input_1"], 1, 0, 3
    for v in cfg:
        if v == "M":
            layer_names.append(f"pool{block}" if names == "vggface" else f"block{block}_pool")
            block, conv = block + 1, 0
            continue
        conv += 1
        name = f"conv{block}_{conv}" if names == "vggface" else f"block{block}_conv{conv}"
        weights[name] = (rng.normal(0, np.sqrt(2 / (9 * ch)), (3, 3, ch, v)).astype(np.float32),
                         rng.normal(0, 0.05, v).astype(np.float32))
        layer_names.append(name)
        ch = v
    if dense:
        layer_names.append("flatten")
        fc_names = ("fc6", "fc7", "fc8") if names == "vggface" else ("fc1", "fc2", "predictions")
        n_in = dense[0]
        for name, n_out in zip(fc_names, dense[1:], strict=False):
            weights[name] = (rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)).astype(np.float32),
                             rng.normal(0, 0.05, n_out).astype(np.float32))
            layer_names += [name, f"{name}/relu"] if names == "vggface" else [name]  # nests like Keras 2
            n_in = n_out
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_save else f
        root.attrs["layer_names"] = [n.encode() for n in layer_names]
        root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name in layer_names:
            g = root.require_group(name)
            wnames = [f"{name}/kernel:0", f"{name}/bias:0"] if name in weights else []
            g.attrs["weight_names"] = [w.encode() for w in wnames]
            for wname, arr in zip(wnames, weights.get(name, ()), strict=False):
                g.create_dataset(wname, data=arr)
    return weights


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D(3x3, padding='same') on NHWC, as a patch matrix product."""
    n, h, w, c = x.shape
    patches = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3),
                                                       axis=(1, 2))  # (n, h, w, c, 3, 3)
    patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, 9 * c)
    return (patches @ kernel.reshape(9 * c, -1).astype(np.float64) + bias).reshape(n, h, w, -1)


def _keras_forward(x: np.ndarray, cfg: list, weights: dict, *, names: str = "vggface",
                   top: bool = True) -> np.ndarray:
    """The Keras VGG forward in numpy, NHWC: conv+relu, 2x2 max-pool, flatten, dense (+relu), logits."""
    h, block, conv = x.astype(np.float64), 1, 0
    for v in cfg:
        if v == "M":
            n, hh, ww, c = h.shape
            h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
            block, conv = block + 1, 0
            continue
        conv += 1
        h = np.maximum(_conv_same(h, *weights[f"conv{block}_{conv}" if names == "vggface" else
                                               f"block{block}_conv{conv}"]), 0)
    if not top:
        return h
    h = h.reshape(len(h), -1)  # Keras flattens H, W, C
    fc = ("fc6", "fc7", "fc8") if names == "vggface" else ("fc1", "fc2", "predictions")
    for i, name in enumerate(fc):
        kernel, bias = weights[name]
        h = h @ kernel.astype(np.float64) + bias
        if i < 2:
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("names, model_save", [("vggface", False), ("keras", True)])
def test_converted_keras_vgg_reproduces_the_keras_forward_end_to_end(tmp_path, names, model_save):
    from featpipe.backbones._convert import keras_vgg_state_dict

    size, classes = 64, 5  # 2x2 map after the last pool, so fc6's flatten order matters
    weights = _write_keras_h5(tmp_path / "small.h5", SMALL_VGG16, (16 * 2 * 2, 32, 32, classes),
                              names=names, model_save=model_save)
    converted = keras_vgg_state_dict(tmp_path / "small.h5", "vgg16")
    assert converted.has_top and converted.n_classes == classes

    net = torchvision.models.vgg.VGG(torchvision.models.vgg.make_layers(SMALL_VGG16), init_weights=False)
    net.avgpool = torch.nn.Identity()
    net.classifier = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(),
                                         torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Dropout(),
                                         torch.nn.Linear(32, classes))
    net.load_state_dict(converted.state_dict, strict=True)
    x = np.random.default_rng(1).normal(0, 50, (2, size, size, 3)).astype(np.float32)
    expected = _keras_forward(x, SMALL_VGG16, weights, names=names)
    with torch.inference_mode():
        got = net.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.abs(expected).max() > 1e-2  # a forward that did not collapse to zero


@pytest.mark.slow
def test_convert_weights_cli_then_weights_embed_like_keras_with_vggface_preprocessing(tmp_path):
    """Full-width VGG16 convolutions ("notop" file) through the CLI, --weights and the image pipeline."""
    import timm
    from click.testing import CliRunner
    from PIL import Image
    from skimage import data

    from featpipe.cli import main

    cfg = timm.models.vgg.cfgs["vgg16"]
    weights = _write_keras_h5(tmp_path / "notop.h5", cfg, seed=2)
    r = CliRunner().invoke(main, ["convert-weights", str(tmp_path / "notop.h5"), "--arch", "vgg16",
                                  "--out", str(tmp_path / "vggface.pth")])
    assert r.exit_code == 0, r.output
    assert "convolutions only" in r.output and "--layer block5_pool" in r.output

    size = 32
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BILINEAR))
    Image.fromarray(rgb).save(tmp_path / "face.png")
    backbone = load_backbone(resolve_spec("vgg16", weights=tmp_path / "vggface.pth", layer="block5_pool",
                                          image_size=size))
    with Image.open(tmp_path / "face.png") as img:
        feats = backbone.forward(backbone.preprocess(img.convert("RGB"))[None])
    bgr_minus_mean = rgb[None, :, :, ::-1].astype(np.float64) - np.array([93.5940, 104.7624, 129.1863])
    expected = _keras_forward(bgr_minus_mean, cfg, weights, top=False).mean(axis=(1, 2))
    np.testing.assert_allclose(feats, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())

    pre = backbone.config()["preprocessing"]  # recorded, hence part of the cache key
    assert pre["channel_order"] == "BGR" and pre["std"] == [1 / 255] * 3
    np.testing.assert_allclose(np.array(pre["mean"]) * 255, [129.1863, 104.7624, 93.5940])


def test_convert_weights_bad_files_are_one_line_errors(tmp_path):
    import timm
    from click.testing import CliRunner

    from featpipe.cli import main

    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    _write_keras_h5(tmp_path / "vgg11.h5", timm.models.vgg.cfgs["vgg11"], names="keras")
    _write_keras_h5(tmp_path / "small.h5", SMALL_VGG16, (64, 32, 32, 5))
    cases = [("junk.h5", "not an HDF5 file"), ("vgg11.h5", "has no layer 'conv1_2' or 'block1_conv2'"),
             ("small.h5", "do not fit vgg16")]
    for name, why in cases:
        r = CliRunner().invoke(main, ["convert-weights", str(tmp_path / name), "--out", str(tmp_path / "o.pth")])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], r.output
    assert not (tmp_path / "o.pth").exists()
