"""featpipe report on real artifacts: tiny images -> real embed (random-init timm) -> real fit-head
(CLI and API) -> report; the page is opened in headless Chromium and checked from its dumped DOM."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featpipe.checksum import sha256_file
from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.errors import FeaturepipeError
from featpipe.features.cache import FeatureCache
from featpipe.features.embed import embed_dataset
from featpipe.reporting import build_report
from featpipe.reporting._duplicates import calibrate, exact_duplicates, near_copies
from featpipe.reporting._label_issues import Probe, confident_learning, find_label_issues, probe_from_run
from featpipe.runs.fit import fit_cache, write_run

from conftest import TINY, TINY_SIZE, make_class_folders

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FAST = {
    "logistic": {"C_grid": (1e-2, 1.0), "refine_steps": 0},
    "mlp": {"hidden": (16,), "max_epochs": 10, "patience": 3, "weight_decay_grid": (1e-4,)},
    "lgbm": {
        "grid": ({"num_leaves": 7, "learning_rate": 0.2, "min_child_samples": 3, "feature_fraction": 1.0},),
        "n_estimators": 15,
        "early_stopping_rounds": 5,
        "n_jobs": 1,
    },
}
MISLABELLED = ("cat/wrong_dog", "fox/wrong_dog")


def _spec(size: int = TINY_SIZE):
    from featpipe.backbones import resolve_spec

    return resolve_spec(TINY, pretrained=False, image_size=size)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A multiclass dataset with two planted label errors and one undecodable file, embedded with a
    tiny random-init backbone, one head fitted through the CLI; the report built through the CLI."""
    root = tmp_path_factory.mktemp("study")
    # 30 per class: with fewer rows the out-of-fold probabilities are too soft for confident learning
    data = make_class_folders(root / "pets", {"cat": 30, "dog": 30, "fox": 30})
    shutil.move(data / "dog" / "003.png", data / "cat" / "wrong_dog.png")
    shutil.move(data / "dog" / "007.png", data / "fox" / "wrong_dog.png")
    (data / "dog" / "broken.jpg").write_bytes(b"this is not a JPEG")
    res = embed_dataset(load_dataset(data), _spec(), cache_dir=root / "cache", progress=False)
    runner = CliRunner()
    r = runner.invoke(
        main, ["fit-head", "--cache", str(res.path), "--head", "logistic", "--out", str(root / "models")]
    )
    assert r.exit_code == 0, r.output
    fit_output = r.output
    ft = root / "models" / "finetune-tiny"
    ft.mkdir()
    (ft / "history.json").write_text(
        json.dumps(
            {
                "epochs": [
                    {
                        "epoch": e,
                        "train_loss": 1 / e,
                        "val_loss": 1.2 / e,
                        "train_metric": 1 - 0.5 / e,
                        "val_metric": 0.9 - 0.5 / e,
                    }
                    for e in range(1, 5)
                ]
            }
        )
    )
    out = root / "report"
    r = runner.invoke(
        main,
        [
            "report",
            "--cache-dir",
            str(root / "cache"),
            "--models",
            str(root / "models"),
            "--out",
            str(out),
            "--human-baseline",
            "0.9",
        ],
    )
    assert r.exit_code == 0, r.output
    return {"root": root, "cache": res.path, "out": out, "models": root / "models", "fit_output": fit_output,
            "output": r.output}


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    """Digits (600 rows, pixel features) with logistic and LightGBM heads; class '0' sits almost only in train,
    so the train-majority class is the rarest on test."""
    from _digits import digits, write_cache

    root = tmp_path_factory.mktemp("digits")
    _, y, split = digits(600)
    zeros = np.flatnonzero(y == 0)
    split[zeros] = "train"
    split[zeros[:5]] = "test"
    (root / "cache").mkdir()
    cache = write_cache(root / "cache" / "digits.h5", "multiclass", n=600, split=split)
    for head in ("logistic", "lgbm"):
        for run in fit_cache(FeatureCache.open(cache), head, head_params=FAST):
            write_run(run, root / "models")
    out = root / "report"
    build_report(cache_dir=root / "cache", models_dir=root / "models", out=out, analyses=False)
    return {"root": root, "cache": cache, "out": out, "models": root / "models", "y": y, "split": split}


def _dump_dom(html: Path, tmp: Path) -> tuple[str, str]:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chr'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html.resolve().as_uri(),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def _page_checks(dom: str, log: str, min_images: int, leaderboard: bool = True) -> None:
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]  # anything the page wrote to the console
    assert not console, console
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert attrs.get("checked") == "1", "the page's self-check script did not run"
    ok, total = map(int, attrs["images-ok"].split("/"))
    assert total > min_images and ok == total, f"broken images: {attrs.get('broken-images')}"
    assert attrs["js-errors"] == "0", re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S).group(1)
    assert 'id="datasets"' in dom and ('data-testid="leaderboard"' in dom or not leaderboard)


def test_report_page_loads_in_headless_chromium(study, digits_report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    dom, log = _dump_dom(study["out"] / "index.html", tmp_path)
    _page_checks(dom, log, 20)
    assert re.search(r'<img[^>]+data-kind="confusion-matrix"', dom)
    assert "cat/broken" not in dom or "not an image" in dom
    # the data-quality section: the label check's estimate and basis with its flagged cards, the exact and
    # near-copy findings, each rendered with its images
    q = re.search(r'<article class="quality" data-testid="quality">(.*?)</article>', dom, re.S).group(1)
    assert 'data-testid="label-issues-estimate"' in q and "Basis: logistic head on" in q
    assert all(m in q for m in MISLABELLED) and re.search(r'<figure class="card wrong">\s*<img src="thumbs/', q)
    assert 'data-testid="exact-duplicates"' in q and 'data-testid="near-copies"' in q
    assert 'data-testid="small-sample"' in dom and 'data-testid="chance"' in dom
    # the sections beside the leaderboard: paired differences, calibration, search curve, per-class scores
    dom, log = _dump_dom(digits_report["out"] / "index.html", tmp_path)
    _page_checks(dom, log, 5)
    assert re.search(r'<img[^>]+src="plots/[^"]+-cal-[^"]+"[^>]+data-kind="reliability"', dom)
    assert re.search(r'<img[^>]+data-kind="search-curve"', dom)
    assert len(re.findall(r'data-testid="paired-diff"', dom)) == 2 and "top run" in dom
    assert re.search(r'data-testid="per-class-side-by-side"', dom) and 'class="n best"' in dom
    assert 'data-testid="small-sample"' not in dom  # 150 test rows, every class at least 5


def test_report_folder_contents(study):
    out = study["out"]
    html = (out / "index.html").read_text()
    # self-contained: no remote resources
    assert not re.search(r'(src|href)="(https?:)?//', html)
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert srcs and all((out / s).is_file() for s in srcs)
    assert all(s.startswith(("plots/", "thumbs/")) for s in srcs)
    assert len(list((out / "thumbs").glob("*.jpg"))) <= 3 * 8 + 2 * 24 + 12 * 2 + 24 * 2
    # dataset: counts, failed image with its reason, thumbnails per class
    assert "dog/broken" in html and "not an image" in html
    # leaderboard.csv: one row per head with val/test and the reference lines
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(rows) == 1 and rows[0]["head"] == "logistic" and rows[0]["metric"] == "accuracy"
    assert 0 <= float(rows[0]["test"]) <= 1 and float(rows[0]["human_baseline"]) == 0.9
    assert float(rows[0]["test_ci_lo"]) <= float(rows[0]["test"]) <= float(rows[0]["test_ci_hi"])
    assert rows[0]["selection"] == "5-fold CV on train+val"  # 42 images: too few val rows to select on
    with np.load(Path(rows[0]["dir"]) / "predictions.npz") as z:  # the best constant: the test majority
        y_test = z["y_true"][z["split"] == "test"].astype(int)
    assert float(rows[0]["chance"]) == pytest.approx(np.bincount(y_test).max() / len(y_test), abs=1e-5)
    summary = (out / "summary.md").read_text()
    assert "selection scores" in summary and "test 95% CI" in summary and "selection scores" in html
    assert (
        "Leaderboard: pets" in summary and "label issues among" in summary and "Fine-tune runs" in summary
    )
    # per model sections: confusion matrix, ROC/PR, galleries; fine-tune curves; run facts
    for marker in (
        "confusion matrix",
        "ROC and precision-recall curves",
        "Least certain predictions",
        "fine-tune curves",
        "Run facts",
        "torch device",
    ):
        assert marker in html, marker


def test_label_errors_are_found_and_ranked_first(study):
    c = FeatureCache.open(study["cache"])
    metrics = json.loads(next(study["models"].rglob("metrics.json")).read_text())
    probe = probe_from_run(metrics, c, "tiny")
    assert probe.head == "logistic" and probe.params == metrics["params"]
    info = find_label_issues(probe, seed=0)
    flagged = [str(c.ids[d["row"]]) for d in info["flags"]]
    assert set(flagged[:2]) == set(MISLABELLED), flagged
    assert all(d["suggested"] == "dog" for d in info["flags"][:2])
    assert info["n_used"] == int((c.ok & c.labeled).sum()) and info["too_weak"] is None
    assert 1.5 <= info["n_estimated"] <= 4 and info["oof_accuracy"] > 0.9
    # bounded: a seeded subsample when there are more rows than max_rows, and said so
    small = find_label_issues(probe, seed=0, max_rows=20)
    assert small["subsampled"] and small["n_used"] == 20
    # the report shows them with thumbnails, writes every flag to label_issues.csv and says how many
    html = (study["out"] / "index.html").read_text()
    assert all(m in html for m in MISLABELLED)
    rows = list(csv.DictReader((study["out"] / "label_issues.csv").open()))
    assert list(rows[0]) == ["path", "split", "given", "suggested", "score"]
    assert [r["path"] for r in rows] == [str(c.paths[d["row"]]) for d in info["flags"]]
    assert {(r["given"], r["suggested"]) for r in rows[:2]} == {("cat", "dog"), ("fox", "dog")}
    assert all(r["split"] in ("train", "val", "test") for r in rows)
    assert f"label_issues.csv: {len(rows)} flagged image" in study["output"]


def _flip(y: np.ndarray, rate: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), int(round(rate * len(y))), replace=False)
    out = y.copy()
    out[idx] = (out[idx] + rng.integers(1, k, len(idx))) % k
    return out, idx


def test_confident_learning_estimates_and_finds_flipped_labels_on_digits(tmp_path):
    """Pixel features of scikit-learn's 1,797 digits: clean labels give almost no flags; with 5% of the
    labels flipped at random the estimate is close to the truth and the flags are mostly the flips."""
    from _digits import write_cache

    c = FeatureCache.open(write_cache(tmp_path / "d.h5", "multiclass", n=1797))
    probe = Probe(c, "logistic", {"C": 0.3})
    clean = find_label_issues(probe)
    assert clean["too_weak"] is None and clean["oof_accuracy"] > 0.95
    assert clean["n_flagged"] < 0.01 * len(c) and clean["n_estimated"] < 0.01 * len(c)
    c.labels, flipped = _flip(np.asarray(c.labels), 0.05, 10, seed=0)
    noisy = find_label_issues(probe)
    found = {f["row"] for f in noisy["flags"]}
    hits = len(found & set(flipped.tolist()))
    assert hits / len(found) >= 0.6 and hits / len(flipped) >= 0.6, (hits, len(found), len(flipped))
    assert 0.7 * len(flipped) <= noisy["n_estimated"] <= 1.5 * len(flipped)
    scores = [f["score"] for f in noisy["flags"]]
    assert scores == sorted(scores)  # lowest self-confidence first


def test_confident_learning_algorithm():
    """Three classes of 100, a model sure of the true class except on 30 rows where it is unsure (no
    class reaches its threshold): the confident joint counts the 2 wrong labels per given class among
    the sure rows, calibration scales them to the class size, and pruning flags exactly the 6."""
    rng = np.random.default_rng(0)
    true = np.repeat([0, 1, 2], 100)
    P = np.full((300, 3), 0.05)
    P[np.arange(300), true] = 0.9
    wrong = np.array([3, 50, 120, 180, 250, 299])
    unsure = rng.choice(np.setdiff1d(np.arange(300), wrong), 30, replace=False)
    P[unsure] = 1 / 3
    given = true.copy()
    given[wrong] = (true[wrong] + 1) % 3
    cl = confident_learning(given, P)
    sure = np.bincount(given, minlength=3) - np.bincount(given[unsure], minlength=3)
    assert (cl["confident_joint"].sum(1) == sure).all()
    assert np.allclose(cl["calibrated"].sum(1), np.bincount(given, minlength=3))
    assert np.isclose(cl["n_estimated"], sum(2 * 100 / s for s in sure))
    assert set(np.flatnonzero(cl["flagged"])) == set(wrong.tolist())
    assert (cl["suggested"][wrong] == true[wrong]).all()


def test_a_model_too_weak_to_judge_flags_nothing_and_says_so(tmp_path):
    """Features of pure noise: the checking model does no better than the majority class, so the report
    lists no label error (today it listed its own mistakes as cards) and says why."""
    from _digits import write_cache

    path = write_cache(tmp_path / "noise.h5", "multiclass", n=400)
    import h5py

    with h5py.File(path, "r+") as f:
        f["features"][...] = np.random.default_rng(0).normal(size=f["features"].shape)
    c = FeatureCache.open(path)
    info = find_label_issues(Probe(c, "logistic", {"C": 1.0}))
    assert info["too_weak"] and "majority class" in info["too_weak"]
    assert info["flags"] == [] and info["n_estimated"] is None
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", "--cache", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "index.html").read_text()
    assert 'data-testid="label-issues-too-weak"' in html and "Not judged" in html
    assert 'class="card wrong"' not in html and "Estimated label issues" not in html
    assert (out / "label_issues.csv").read_text().strip() == "path,split,given,suggested,score"
    assert "label_issues.csv: 0 flagged images" in r.output


def test_multilabel_label_issues_are_per_label_and_per_image(tmp_path):
    from _digits import write_cache

    c = FeatureCache.open(write_cache(tmp_path / "ml.h5", "multilabel", n=1000))
    Y = np.asarray(c.labels).copy()
    rng = np.random.default_rng(1)
    flip = rng.choice(len(Y), 30, replace=False)
    Y[flip, 2] ^= 1  # "is_zero" flipped on 30 images
    c.labels = Y
    info = find_label_issues(Probe(c, "logistic", [{"C": 0.3}, {"C": 0.3}, {"C": 0.3}, None]))
    per = {r["label"]: r for r in info["per_label"]}
    assert per["rare"]["n_estimated"] is None and per["is_zero"]["n_estimated"] is not None
    found = {f["row"] for f in info["flags"] if "is_zero" in f["labels"]}
    hits = len(found & set(flip.tolist()))
    assert hits >= 0.6 * len(flip) and hits >= 0.6 * len(found), (hits, len(found))
    f = next(f for f in info["flags"] if f["row"] in set(flip.tolist()) and f["labels"] == ["is_zero"])
    given, suggested = set(filter(None, f["given"].split(";"))), set(filter(None, f["suggested"].split(";")))
    assert given ^ suggested == {"is_zero"}


def _two_views(tmp_path, labels, names=("top", "bottom")):
    """The digits as two 'backbones' that each see half of the image (top and bottom four pixel rows):
    each is right on about 80% of the digits, and their mistakes are mostly different ones."""
    from sklearn.datasets import load_digits

    from _digits import write_arrays_cache

    X, _ = load_digits(return_X_y=True)
    split = np.array(["train", "val", "test"])[np.arange(len(X)) % 3]
    return [write_arrays_cache(tmp_path / f"{name}.h5", X[:, half], labels, split, "multiclass",
                               [str(d) for d in range(10)], dataset="digits", backbone=name)
            for name, half in zip(names, (slice(0, 32), slice(32, 64)), strict=True)]


def test_checks_on_two_backbones_flag_what_both_find(tmp_path):
    """Alone, each half-image check is too weak (its confident mistakes would outnumber the 90 flipped
    labels: 0.49 precision); a row flagged by both is a wrong label far more often, so the report lists
    the consensus (before: only the best cache was checked, too weak, and nothing was listed)."""
    from sklearn.datasets import load_digits

    _, y = load_digits(return_X_y=True)
    noisy, flipped = _flip(y, 0.05, 10, seed=0)
    paths = _two_views(tmp_path, noisy)
    caches = [FeatureCache.open(p) for p in paths]
    alone = find_label_issues(Probe(caches[0], "logistic", {"C": 0.3}))
    assert alone["too_weak"] and alone["flags"] == []
    both = find_label_issues([Probe(c, "logistic", {"C": 0.3}) for c in caches])
    assert both["too_weak"] is None and both["consensus"] == 2 and [c["used"] for c in both["checks"]] == [True, True]
    found = {f["row"] for f in both["flags"]}
    hits = len(found & set(flipped.tolist()))
    assert hits / len(found) >= 0.7 and hits / len(flipped) >= 0.6, (hits, len(found), len(flipped))
    assert both["n_estimated"] == len(found) < min(c["n_estimated"] for c in both["checks"])
    scores = [f["score"] for f in both["flags"]]
    assert scores == sorted(scores)
    # the report, without fitted heads: a logistic head on each cache, the consensus listed and explained
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", "--cache", str(paths[0]), "--cache", str(paths[1]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    hits = len({r["path"] for r in rows} & {f"arrays#{i}" for i in flipped})
    assert rows and hits / len(rows) >= 0.6 and hits / len(flipped) >= 0.6, (hits, len(rows))
    html = (out / "index.html").read_text()
    assert 'data-testid="label-issues-consensus"' in html and "flagged by both checks" in html
    assert "flagged by both checks" in (out / "summary.md").read_text()
    if CHROMIUM is not None:  # the section renders: each check with its figures, then the cards
        dom, log = _dump_dom(out / "index.html", tmp_path)
        _page_checks(dom, log, 0, leaderboard=False)  # no fitted heads: no leaderboard
        q = re.search(r'<article class="quality" data-testid="quality">(.*?)</article>', dom, re.S).group(1)
        assert len(re.findall(r"alone \d+ flags", q)) == 2
        assert "logistic head on top" in q and "logistic head on bottom" in q
        assert len(re.findall(r'<figure class="card wrong">', q)) == min(len(rows), 24)


def test_a_cache_of_other_labels_takes_no_part_in_the_consensus(tmp_path):
    from sklearn.datasets import load_digits

    _, y = load_digits(return_X_y=True)
    top, other = _two_views(tmp_path, y)
    c_other = FeatureCache.open(other)
    c_other.labels = (np.asarray(c_other.labels) + 1) % 10  # another labelling of the same images
    info = find_label_issues([Probe(FeatureCache.open(top), "logistic", {"C": 0.3}),
                              Probe(c_other, "logistic", {"C": 0.3})])
    assert len(info["checks"]) == 1 and info["consensus"] == 1
    assert info["not_used"] == ["logistic head on the features: other labels"]  # a Probe built without a name


def test_multilabel_checks_on_two_backbones_judge_each_label_together(tmp_path):
    from sklearn.datasets import load_digits

    from _digits import MULTILABEL_CLASSES, multilabel_targets, write_arrays_cache

    X, y = load_digits(return_X_y=True)
    split = np.array(["train", "val", "test"])[np.arange(len(X)) % 3]
    Y = multilabel_targets(y, split)
    flip = np.random.default_rng(1).choice(len(Y), 40, replace=False)
    Y[flip, 0] ^= 1  # "even" flipped on 40 images
    caches = [FeatureCache.open(write_arrays_cache(tmp_path / f"{n}.h5", X[:, h], Y, split, "multilabel",
                                                   MULTILABEL_CLASSES, dataset="d", backbone=n))
              for n, h in (("top", slice(0, 32)), ("bottom", slice(32, 64)))]
    params = [{"C": 0.3}] * 3 + [None]
    alone = find_label_issues(Probe(caches[0], "logistic", params))
    assert alone["too_weak"] and alone["flags"] == []  # each half alone: too weak on every label
    info = find_label_issues([Probe(c, "logistic", params) for c in caches])
    per = {r["label"]: r for r in info["per_label"]}
    assert per["even"]["consensus"] == 2 and per["even"]["too_weak"] is None and per["rare"]["n_estimated"] is None
    found = {f["row"] for f in info["flags"] if "even" in f["labels"]}
    hits = len(found & set(flip.tolist()))
    assert hits >= 0.5 * len(flip) and hits >= 0.5 * len(found), (hits, len(found))
    # the report says which labels were judged together
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", "--cache", str(caches[0].path), "--cache", str(caches[1].path),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "index.html").read_text()
    line = re.search(r"Labels judged by both checks \(([^)]*)\)", html).group(1)  # best check first
    assert sorted(line.split(", ")) == ["logistic head on bottom", "logistic head on top"]


def _brute_force_near_copies(c, threshold):
    F = c.features[c.ok].mean(0)
    G = c.features - F
    G = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    flagged = {}
    for ref, query in (("train", "test"), ("train", "val"), ("val", "test")):
        ia = np.flatnonzero((c.splits == ref) & c.ok)
        ib = np.flatnonzero((c.splits == query) & c.ok)
        S = G[ib] @ G[ia].T
        best = ia[S.argmax(1)]
        same = np.array([c.content_hash[a] == c.content_hash[b] for a, b in zip(best, ib, strict=True)])
        flagged[f"{ref}/{query}"] = int(((S.max(1) >= threshold) & ~same).sum())
    return flagged


def test_near_copies_blockwise_equal_brute_force(study):
    c = FeatureCache.open(study["cache"])
    for t in (0.5, 0.8):
        got = near_copies(c, t, top=1000, block=5)  # many blocks on both sides
        assert got["counts"] == _brute_force_near_copies(c, t)
    assert got["n_pairs"] > 0
    sims = [p["similarity"] for p in got["pairs"]]
    assert sims == sorted(sims, reverse=True) and min(sims) >= 0.8
    assert all(c.splits[p["a"]] != c.splits[p["b"]] for p in got["pairs"])


def _smooth_image(base, rng):
    """A 32 px image of smooth colour blobs: small crops, resizes and re-encodes barely change it."""
    g = np.clip(np.asarray(base) + rng.normal(0, 60, (4, 4, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(g).resize((32, 32), Image.BILINEAR)


def test_exact_copies_and_near_copies_across_given_splits(tmp_path):
    """A test image identical to a train image is an exact duplicate; a resized, re-encoded copy of
    another is the only near-copy; distinct images of one class (today flagged at cosine 0.73) are not."""
    rng = np.random.default_rng(1)
    root = tmp_path / "leaky"
    for split, n in (("train", 20), ("test", 8)):
        for cls, base in (("warm", (200, 90, 50)), ("cool", (50, 100, 200))):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                _smooth_image(base, rng).save(d / f"{k:02d}.png")
    src = Image.open(root / "train" / "warm" / "03.png")
    src.resize((27, 27), Image.BILINEAR).resize((32, 32), Image.BILINEAR).save(root / "test" / "warm" / "near.jpg",
                                                                               quality=80)
    shutil.copy(root / "train" / "cool" / "05.png", root / "test" / "cool" / "same.png")
    res = embed_dataset(load_dataset(root, val_fraction=0.0), _spec(), cache_dir=tmp_path / "cache", progress=False)
    c = FeatureCache.open(res.path)
    ids = [str(i) for i in c.ids]
    ex = exact_duplicates(c)
    assert ex["n_groups"] == 1 and ex["n_cross_split"] == 1
    assert {ids[r] for r in ex["groups"][0]["rows"]} == {"train/cool/05", "test/cool/same"}
    from featpipe.data.images import load_image

    cal = calibrate(c, load_image, seed=0)
    assert cal["separable"] and cal["copies_found"] >= 0.8 and cal["distinct_above"] <= 0.05
    near = near_copies(c, cal["threshold"])
    assert [(ids[p["a"]], ids[p["b"]]) for p in near["pairs"]] == [("train/warm/03", "test/warm/near")]
    # the report shows both with thumbnails and the similarity
    out = tmp_path / "rep"
    build_report(caches=[res.path], out=out)
    html = (out / "index.html").read_text()
    q = html[html.index('data-testid="quality"'):]
    assert "1 group of identical images" in q and "1 spanning two splits" in q and "test/cool/same" in q
    assert "1 pair at centred cosine" in q and "test/warm/near" in q and re.search(r"cosine 0\.9\d\d", q)


@pytest.mark.slow
def test_similar_digits_are_not_reported_as_near_copies(tmp_path):
    """Digit images of one class look alike; without a single copy among them the report flags no pair
    (the nearest-neighbour ratio test flagged dozens), and says the backbone cannot tell copies here."""
    from featpipe.data.images import load_image
    from featpipe.data.samples import write_digits

    data = write_digits(tmp_path / "digits", per_class=20)
    res = embed_dataset(load_dataset(data), _spec(), cache_dir=tmp_path / "cache", progress=False)
    c = FeatureCache.open(res.path)
    cal = calibrate(c, load_image, seed=0)
    found = near_copies(c, cal["threshold"])["n_pairs"] if cal["separable"] else 0
    assert found == 0 and exact_duplicates(c)["n_groups"] == 0
    index = build_report(caches=[res.path], out=tmp_path / "rep")
    q = index.read_text().split('data-testid="near-copies"')[1]
    assert q.startswith(">None flagged") or q.startswith(">0 pairs")


def test_caches_only_then_rerun_with_new_heads_and_backbone_updates(study, tmp_path):
    out = tmp_path / "rep"
    index = build_report(cache_dir=study["root"] / "cache", out=out)
    html = index.read_text()
    assert "No fitted heads yet" in html and "Estimated label issues" in html
    thumbs = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").glob("*.jpg")}
    assert thumbs
    # new backbone + new heads: the report picks them up; thumbnails are reused, not regenerated
    data = study["root"] / "pets"
    res = embed_dataset(
        load_dataset(data), _spec(TINY_SIZE + 8), cache_dir=study["root"] / "cache2", progress=False
    )
    models = tmp_path / "models"
    for path in (study["cache"], res.path):
        for run in fit_cache(FeatureCache.open(path), "all", head_params=FAST):
            write_run(run, models)
    build_report(cache_dir=study["root"] / "cache", caches=[res.path], models_dir=models, out=out)
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(rows) == 6 and {r["head"] for r in rows} == {"logistic", "mlp", "lgbm"}
    assert len({r["backbone"] for r in rows}) == 2
    vals = [float(r["val"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    # the labels are checked by the head and backbone that top the leaderboard
    summary = (out / "summary.md").read_text()
    assert f"({rows[0]['head']} head on {rows[0]['backbone']}" in summary, summary
    for name, mtime in thumbs.items():
        assert (out / "thumbs" / name).stat().st_mtime_ns == mtime
    # plots are redrawn only for changed inputs; stale ones are removed
    plots = {p.name for p in (out / "plots").glob("*.png")}
    build_report(
        cache_dir=study["root"] / "cache", caches=[res.path], models_dir=models, out=out, human_baseline=0.95
    )
    plots2 = {p.name for p in (out / "plots").glob("*.png")}
    changed = plots ^ plots2
    assert changed and all(n.startswith("lb-") for n in changed)  # only the leaderboard chart changed


def test_binary_and_multilabel_threshold_plots(tmp_path):
    rng = np.random.default_rng(0)
    img = tmp_path / "ml" / "img"
    img.mkdir(parents=True)
    lines = ["path,labels"]
    for i in range(40):
        tags = [t for t in ("sky", "tree", "car") if rng.random() < 0.5] or ["sky"]
        col = np.array(
            [200 if "sky" in tags else 30, 180 if "tree" in tags else 40, 160 if "car" in tags else 20]
        )
        arr = np.clip(col + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(img / f"{i}.png")
        lines.append(f"img/{i}.png,{'|'.join(tags)}")
    (tmp_path / "ml" / "labels.csv").write_text("\n".join(lines) + "\n")
    binary = make_class_folders(tmp_path / "bin", {"neg": 16, "pos": 12}, seed=1)
    models = tmp_path / "models"
    caches = []
    for src in (tmp_path / "ml" / "labels.csv", binary):
        res = embed_dataset(load_dataset(src), _spec(), cache_dir=tmp_path / "cache", progress=False)
        caches.append(res.path)
        for run in fit_cache(FeatureCache.open(res.path), "logistic", head_params=FAST):
            write_run(run, models)
    # models only: the caches are found through metrics.json
    index = build_report(models_dir=models, out=tmp_path / "rep")
    html = index.read_text()
    assert html.count('alt="metric vs threshold"') == 2
    assert 'alt="per-label thresholds and F1"' in html and 'alt="label co-occurrence heatmap"' in html
    assert "Per-label thresholds" in html and "multilabel" in html and "binary" in html
    plots = [p.name for p in (tmp_path / "rep" / "plots").glob("*.png")]
    assert any("-thr-" in p for p in plots) and any("-perclass-" in p for p in plots)


def test_nothing_to_report_and_bad_inputs_are_one_line_errors(study, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeaturepipeError, match="nothing to report"):
        build_report(cache_dir=tmp_path / "empty", out=tmp_path / "rep")
    r = CliRunner().invoke(
        main, ["report", "--models", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
    )
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output
    bad = tmp_path / "m" / "ft"
    bad.mkdir(parents=True)
    (bad / "history.json").write_text('{"epochs": 3}')
    with pytest.raises(FeaturepipeError, match="unreadable history.json"):
        build_report(models_dir=tmp_path / "m", out=tmp_path / "rep2")
    index = build_report(
        caches=[study["cache"]], models_dir=tmp_path / "m", out=tmp_path / "rep2", analyses=False
    )
    assert "unreadable history.json" in index.read_text()
    with pytest.raises(FeaturepipeError, match="human baseline"):
        build_report(caches=[study["cache"]], out=tmp_path / "rep3", human_baseline="high")


def test_leaderboard_chart_identity_covers_every_run():
    """A change in any run (here the last of twelve) or a reference line gives the chart a new name."""
    from featpipe.reporting._data import ModelRun
    from featpipe.reporting._leaderboard import _leaderboard_fingerprint

    def runs(last: str) -> list[ModelRun]:
        return [
            ModelRun(Path(f"m/r{i}/logistic"), f"r{i:02d}", "logistic", {}, True, f"r{i:02d}--logistic",
                     last if i == 11 else f"{i:010d}")
            for i in range(12)
        ]

    base = _leaderboard_fingerprint(runs("aaaaaaaaaa"), 0.1, None)
    assert _leaderboard_fingerprint(runs("aaaaaaaaaa"), 0.1, None) == base
    assert _leaderboard_fingerprint(runs("bbbbbbbbbb"), 0.1, None) != base
    assert _leaderboard_fingerprint(runs("aaaaaaaaaa"), 0.1, 0.9) != base


def test_paired_difference_separates_runs_whose_intervals_overlap():
    """Two runs on the same test rows, the second wrong on every row the first is wrong on and 8 more: each
    score lies in the other's 95% interval (the old overlap rule said "not separated"), but the paired
    interval of the difference excludes 0; a run that differs on few rows both ways is not separated."""
    from featpipe.heads.metrics import bootstrap_ci
    from featpipe.reporting._compare import not_separated, paired_vs_top
    from featpipe.reporting._outputs import within_sentence

    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    ids = np.array([f"r{i}" for i in range(n)])

    def run(pred):
        return {"ids": ids, "y": y, "proba": np.eye(3)[pred] * 0.8 + 0.2 / 3, "pred": pred}

    top = y.copy()
    top[:30] = (y[:30] + 1) % 3
    worse = top.copy()
    worse[30:38] = (y[30:38] + 1) % 3
    swapped = top.copy()
    swapped[:2], swapped[30:32] = y[:2], (y[30:32] + 1) % 3  # right on 2 rows top misses, wrong on 2 others
    tests = {"a": run(top), "b": run(worse), "c": run(swapped)}
    ci = {k: bootstrap_ci("accuracy", "multiclass", y, t["proba"], t["pred"]) for k, t in tests.items()}
    acc = {k: (t["pred"] == y).mean() for k, t in tests.items()}
    assert ci["a"][0] <= acc["b"] <= ci["a"][1] and ci["b"][0] <= acc["a"] <= ci["b"][1]
    rows = [{"slug": k, "backbone": k, "head": "logistic"} for k in "abc"]
    paired_vs_top(rows, tests, "accuracy", "multiclass")
    assert rows[0]["vs_top"] is None
    assert rows[1]["separated"] is True and rows[1]["vs_top_hi"] < 0
    assert rows[1]["vs_top"] == pytest.approx(acc["b"] - acc["a"])
    assert rows[2]["separated"] is False and rows[2]["vs_top"] == 0
    assert not_separated(rows) == [rows[0], rows[2]]
    assert within_sentence(not_separated(rows), "accuracy").startswith(
        "The test set does not separate c + logistic from the top run a + logistic: the paired bootstrap")
    # rows are matched by image id, not by position; another test set gets no difference
    perm = rng.permutation(n)
    shuffled = {k: v[perm] for k, v in tests["b"].items()}
    rows2 = [dict(r) for r in rows[:2]]
    paired_vs_top(rows2, {"a": tests["a"], "b": shuffled}, "accuracy", "multiclass")
    assert rows2[1]["vs_top"] == pytest.approx(rows[1]["vs_top"]) and rows2[1]["vs_top_lo"] < 0
    other = {**tests["b"], "ids": np.array([f"x{i}" for i in range(n)])}
    paired_vs_top(rows2, {"a": tests["a"], "b": other}, "accuracy", "multiclass")
    assert rows2[1]["vs_top"] is None and "other test images" in rows2[1]["vs_top_note"]


def _csv(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "leaderboard.csv").open()))


def test_chance_level_is_the_best_constant_predictor_on_test(digits_report):
    """Class '0' is the train majority but has 5 of the test rows: chance is the best constant on test."""
    y, split = digits_report["y"], digits_report["split"]
    yt = y[split == "test"]
    best = np.bincount(yt, minlength=10)
    rows = _csv(digits_report["out"])
    assert [float(r["chance"]) for r in rows] == [pytest.approx(best.max() / len(yt))] * 2
    summary = (digits_report["out"] / "summary.md").read_text()
    assert (f"the best constant predictor's accuracy on the {len(yt)} test rows (always '{best.argmax()}')"
            in summary)
    assert "a uniform random guess scores 0.1000" in summary
    html = (digits_report["out"] / "index.html").read_text()
    assert 'data-testid="chance"' in html and "a uniform random guess among 10 classes scores 0.100" in html


def test_leaderboard_gives_each_run_its_paired_difference_to_the_top(digits_report, tmp_path):
    from featpipe.heads.metrics import calibration

    rows = _csv(digits_report["out"])
    assert len(rows) == 2 and rows[0]["vs_top"] == ""
    top, other = rows
    d, lo, hi = (float(other[k]) for k in ("vs_top", "vs_top_lo", "vs_top_hi"))
    assert d == pytest.approx(float(other["test"]) - float(top["test"]), abs=1e-5) and lo <= d <= hi
    html = (digits_report["out"] / "index.html").read_text()
    assert "vs #1 (paired 95%)" in html and html.count('data-testid="paired-diff"') == 2
    # ECE per run, from its test predictions
    for r in rows:
        with np.load(Path(r["dir"]) / "predictions.npz") as z:
            t = z["split"] == "test"
            want = calibration("multiclass", z["y_true"][t], z["proba"][t].astype(float))["ece"]
        assert float(r["ece_test"]) == pytest.approx(want, rel=1e-5)
    # a run whose predictions.npz lists the test rows in another order gets the same difference
    models = tmp_path / "models"
    shutil.copytree(digits_report["models"], models)
    npz = models / Path(other["dir"]).relative_to(digits_report["models"]) / "predictions.npz"
    with np.load(npz) as z:
        arrs = {k: z[k] for k in z.files}
    perm = np.random.default_rng(1).permutation(len(arrs["ids"]))
    np.savez_compressed(npz, **{k: v[perm] for k, v in arrs.items()})
    record = json.loads((npz.parent / "metrics.json").read_text())  # rewritten as a run: the record names it
    record["record"]["files"]["predictions.npz"] = sha256_file(npz)
    (npz.parent / "metrics.json").write_text(json.dumps(record))
    build_report(models_dir=models, out=tmp_path / "rep", analyses=False)
    again = _csv(tmp_path / "rep")[1]
    assert float(again["vs_top"]) == pytest.approx(d) and float(again["vs_top_lo"]) == pytest.approx(lo)


def test_calibration_search_curve_and_per_class_sections(digits_report):
    html = (digits_report["out"] / "index.html").read_text()
    assert html.count('data-kind="reliability"') == 1
    assert html.count('data-kind="search-curve"') == 1 and html.count('data-testid="no-search"') == 1  # lgbm: 1
    assert "Hyper-parameter search" in html and "the star marks the one chosen" in html
    table = re.search(r'<table[^>]*data-testid="per-class-side-by-side".*?</table>', html, re.S).group(0)
    body = re.findall(r"<tr><td>(\d)</td>(.*?)</tr>", table, re.S)
    assert [c for c, _ in body] == [str(k) for k in range(10)]
    rows = _csv(digits_report["out"])
    metrics = [json.loads((Path(r["dir"]) / "metrics.json").read_text()) for r in rows]
    for cls, cells in body:
        vals = re.findall(r'<td class="n[^"]*" data-v="([^"]*)">', cells)
        support, scores = vals[0], vals[1:]
        assert int(support) == metrics[0]["scores"]["test"]["per_class"][cls]["support"]
        assert [float(v) for v in scores] == [pytest.approx(m["scores"]["test"]["per_class"][cls]["recall"])
                                              for m in metrics]
    assert "Per-class test recall (per-class accuracy) of the top 2 runs" in html


def test_small_test_set_is_said_in_the_cli_table_and_the_report(study):
    """The pets study scores a handful of test images: fit-head's table and the report say so."""
    m = json.loads(next(study["models"].rglob("metrics.json")).read_text())
    n = m["scores"]["test"]["n"]
    assert n < 30
    out = study["fit_output"]
    assert re.search(r"\d\.\d{3}-\d\.\d{3} !", out)
    assert f"small test set: {n} test rows (fewer than 30)" in out
    html = (study["out"] / "index.html").read_text()
    assert 'data-testid="small-sample"' in html and f"{n} test rows (fewer than 30)" in html
    assert "**Small test set**" in (study["out"] / "summary.md").read_text()
