"""Feature options of whole studies: `--tta hflip`, `--align faces`, and fused caches / bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featpipe.backbones import BackboneSpec, load_backbone, resolve_spec
from featpipe.bundle.io import load_model
from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import BackboneError, CacheError
from featpipe.features.cache import FeatureCache
from featpipe.features.embed import embed_dataset, embed_paths
from featpipe.features.fuse import FusedCache
from featpipe.runs.fit import fit_cache

from conftest import TINY, TINY_SIZE

# ------------------------------------------------------------------------------------------- TTA


def test_tta_hflip_is_the_mean_of_image_and_mirror(image_folder: Path, tiny_spec):
    tta = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, tta="hflip")
    plain = load_backbone(tiny_spec)
    path = sorted(image_folder.rglob("*.png"))[0]
    x = plain.preprocess(Image.open(path).convert("RGB"))[None]
    want = (plain.forward(x) + plain.forward(x.flip(-1))) / 2
    assert not np.allclose(plain.forward(x), plain.forward(x.flip(-1)))  # the mirror really differs
    got, ok, _ = embed_paths(tta, [path])
    assert ok.all() and np.allclose(got, want, atol=1e-5)


def test_tta_has_its_own_cache_and_old_specs_keep_their_keys(image_folder: Path, tiny_spec, tmp_path: Path):
    assert "tta" not in tiny_spec.to_dict() and "align" not in tiny_spec.to_dict()  # unchanged cache keys
    tta = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, tta="hflip")
    a = embed_dataset(load_dataset(image_folder), tiny_spec, cache_dir=tmp_path, progress=False)
    b = embed_dataset(load_dataset(image_folder), tta, cache_dir=tmp_path, progress=False)
    assert a.key != b.key and a.path != b.path and "ttahflip" in b.path.name
    assert FeatureCache.open(b.path).backbone["tta"] == "hflip"
    with pytest.raises(BackboneError, match="unknown --tta 'vflip'"):
        resolve_spec(TINY, pretrained=False, tta="vflip")


def test_embed_cli_tta_option(image_folder: Path, tmp_path: Path):
    r = CliRunner().invoke(main, ["embed", "--data", str(image_folder), "--backbone", TINY, "--no-pretrained",
                                  "--image-size", str(TINY_SIZE), "--tta", "hflip", "--cache-dir",
                                  str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    assert "ttahflip" in r.output


# ----------------------------------------------------------------------------------------- align


@pytest.fixture
def astronaut(tmp_path: Path) -> Path:
    from skimage import data

    p = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(p)
    return p


def test_align_faces_puts_landmarks_on_the_sface_template(astronaut: Path):
    from featpipe.backbones._align import align_face, detect_face

    crop = align_face(Image.open(astronaut))
    assert crop.size == (112, 112)
    face = detect_face(np.asarray(crop)[:, :, ::-1].copy())  # detect again on the aligned crop
    assert face is not None
    eyes = face[4:8].reshape(2, 2)
    # OpenCV's SFace alignment template (112x112): right eye (38.3, 51.7), left eye (73.5, 51.5)
    assert np.abs(eyes - [[38.29, 51.70], [73.53, 51.50]]).max() < 6


def test_align_faces_embeds_faces_and_fails_faceless_images_with_reason(astronaut: Path, tmp_path: Path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(blank)
    spec = resolve_spec("sface", align="faces")
    assert spec.align == "faces" and "alignfaces" in spec.tag()
    feats, ok, errors = embed_paths(spec, [astronaut, blank])
    assert ok.tolist() == [True, False] and "no face found" in errors[1]
    # the recorded spec (what a bundle holds) rebuilds the same aligned extractor
    again, _, _ = embed_paths(BackboneSpec.from_dict(spec.to_dict()).to_dict(), [astronaut])
    assert np.allclose(again[0], feats[0], atol=1e-5)
    # and differs from the unaligned whole photo
    whole, _, _ = embed_paths(resolve_spec("sface"), [astronaut])
    assert not np.allclose(whole[0], feats[0], atol=1e-3)


# ------------------------------------------------------------------------------------------ fuse


def _permuted(cache: FeatureCache, order: np.ndarray, fail: int) -> FeatureCache:
    """The same cache with rows in another order and one row failed (as another backbone might leave it)."""
    data = {k: np.asarray(getattr(cache, a))[order].copy() for k, a in (
        ("ids", "ids"), ("paths", "paths"), ("split", "splits"), ("labels", "labels"), ("labeled", "labeled"),
        ("status", "status"), ("error", "errors"), ("content_hash", "content_hash"), ("features", "features"))}
    data["status"][fail] = 2
    return FeatureCache(cache.path, cache.attrs, data)


def test_fused_cache_matches_rows_by_image_id(image_folder: Path, tmp_path: Path):
    m = load_dataset(image_folder)
    a = FeatureCache.open(embed_dataset(m, resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE),
                                        cache_dir=tmp_path, progress=False).path)
    b0 = FeatureCache.open(embed_dataset(m, resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, seed=1),
                                         cache_dir=tmp_path, progress=False).path)
    order = np.random.default_rng(0).permutation(len(b0))
    b = _permuted(b0, order, fail=3)
    fused = FusedCache([a, b])
    assert len(fused) == len(a) - 1 and fused.n_dropped == 1
    assert b.ids[3] not in set(fused.ids)
    bi = {i: r for r, i in enumerate(b.ids)}
    ai = {i: r for r, i in enumerate(a.ids)}
    for r, img_id in enumerate(fused.ids):
        assert np.array_equal(fused.features[r], np.concatenate([a.features[ai[img_id]], b.features[bi[img_id]]]))
    assert fused.backbone["kind"] == "fused" and len(fused.backbone["parts"]) == 2
    # a head on the fused cache gives a bundle that embeds images with both backbones
    (run,) = fit_cache(fused, "logistic", seed=0)
    paths = [str(p) for p in sorted(image_folder.rglob("*.png"))[:4]]
    feats, ok, _ = embed_paths(run.model.backbone_spec, paths)
    assert ok.all() and feats.shape[1] == a.feature_dim + b.feature_dim
    assert len(run.model.predict(paths)) == 4
    assert np.allclose(run.model.predict_proba(paths), run.model.predict_proba(feats), atol=1e-6)


def test_fusing_other_splits_is_refused(image_folder: Path, tmp_path: Path):
    spec = resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)
    a = FeatureCache.open(embed_dataset(load_dataset(image_folder), spec, cache_dir=tmp_path / "a",
                                        progress=False).path)
    b = FeatureCache.open(embed_dataset(load_dataset(image_folder, seed=5), spec, cache_dir=tmp_path / "b",
                                        progress=False).path)
    with pytest.raises(CacheError, match="other splits or labels"):
        FusedCache([a, b])
    with pytest.raises(CacheError, match="at least two"):
        FusedCache([a])


def test_a_fused_bundle_embeds_each_part_with_its_recorded_preprocessing(image_folder: Path, tmp_path: Path):
    m = load_dataset(image_folder)
    caches = [FeatureCache.open(embed_dataset(m, resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE, seed=s),
                                              cache_dir=tmp_path, progress=False).path) for s in (0, 1)]
    (run,) = fit_cache(FusedCache(caches), "logistic", seed=0)
    parts = run.model.backbone_spec["parts"]
    assert [p["preprocessing"] for p in parts] == [c.config["preprocessing"] for c in caches]
    paths = [str(p) for p in sorted(image_folder.rglob("*.png"))[:3]]
    rows = [list(caches[0].paths).index(p) for p in paths]
    feats, ok, _ = embed_paths(run.model.backbone_spec, paths)
    assert ok.all() and np.allclose(feats, np.concatenate([c.features[rows] for c in caches], 1), atol=1e-5)
    # the recorded values are the ones used (not the backbone's current defaults): change one part's mean
    run.model.save(tmp_path / "b" / "model.joblib")
    bundle = load_model(tmp_path / "b" / "model.joblib")
    bundle.backbone_spec["parts"][1]["preprocessing"]["mean"] = [0.0, 0.0, 0.0]
    moved, _, _ = bundle._embed(paths)
    d = caches[0].feature_dim
    assert np.allclose(moved[:, :d], feats[:, :d], atol=1e-5) and not np.allclose(moved[:, d:], feats[:, d:])


def test_a_saved_bundle_holds_no_path_of_the_machine_that_made_it(tmp_path: Path):
    import pickle

    from featpipe.backbones import load_backbone
    from featpipe.heads.model import FeaturepipeModel

    spec = resolve_spec("efficientnet_lite0", image_size=32)
    assert spec.weights_path and Path(spec.weights_path).is_absolute()
    X, y = np.random.default_rng(0).normal(size=(30, 4)), np.repeat(["a", "b", "c"], 10)
    pre = load_backbone(spec).preprocessing
    m = FeaturepipeModel(head_params={"C_grid": (1.0,), "refine_steps": 0}, backbone_spec={**spec.to_dict(), "preprocessing": pre}).fit(X, y)
    m.save(tmp_path / "model.joblib")
    raw = (tmp_path / "model.joblib").read_bytes()
    assert spec.weights_path.encode() not in raw and b"site-packages" not in raw
    back = load_model(tmp_path / "model.joblib")
    assert "weights_path" not in back.backbone_spec and back.weights_["package"] and back.weights_["sha256"]
    assert back.resolved_backbone_spec()["weights_path"] == spec.weights_path  # found again through the package
    assert pickle.loads(pickle.dumps(m)).backbone_spec.get("weights_path") is None
