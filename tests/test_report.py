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

from featpipe.cache import FeatureCache
from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.embed import embed_dataset
from featpipe.errors import FeaturepipeError
from featpipe.fit import fit_cache, write_run
from featpipe.report import build_report
from featpipe.report._analysis import label_issues, near_duplicates

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
    data = make_class_folders(root / "pets", {"cat": 14, "dog": 14, "fox": 14})
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
    return {"root": root, "cache": res.path, "out": out, "models": root / "models", "fit_output": fit_output}


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


def _page_checks(dom: str, log: str, min_images: int) -> None:
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]  # anything the page wrote to the console
    assert not console, console
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert attrs.get("checked") == "1", "the page's self-check script did not run"
    ok, total = map(int, attrs["images-ok"].split("/"))
    assert total > min_images and ok == total, f"broken images: {attrs.get('broken-images')}"
    assert attrs["js-errors"] == "0", re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S).group(1)
    assert 'data-testid="leaderboard"' in dom and 'id="datasets"' in dom


def test_report_page_loads_in_headless_chromium(study, digits_report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    dom, log = _dump_dom(study["out"] / "index.html", tmp_path)
    _page_checks(dom, log, 20)
    assert re.search(r'<img[^>]+data-kind="confusion-matrix"', dom)
    assert "cat/broken" not in dom or "not an image" in dom
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
    assert rows[0]["selection"] == "validation split"
    assert abs(float(rows[0]["chance"]) - 1 / 3) < 0.2
    summary = (out / "summary.md").read_text()
    assert "selection scores" in summary and "test 95% CI" in summary and "selection scores" in html
    assert (
        "Leaderboard: pets" in summary and "suspected label errors" in summary and "Fine-tune runs" in summary
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
    info = label_issues(c, seed=0)
    flagged = [str(c.ids[d["row"]]) for d in info["issues"]]
    assert set(flagged[:2]) == set(MISLABELLED), flagged
    assert all(d["suggested"] == "dog" for d in info["issues"][:2])
    assert info["n_used"] == int((c.ok & c.labeled).sum())
    # bounded: a seeded subsample when there are more rows than max_rows, and said so
    small = label_issues(c, seed=0, max_rows=20)
    assert small["subsampled"] and small["n_used"] == 20
    # and the report shows them with thumbnails
    html = (study["out"] / "index.html").read_text()
    assert all(m in html for m in MISLABELLED)


def _brute_force_duplicates(c, ratio=0.7, min_similarity=0.6, exact=0.95):
    F = c.features[c.ok].mean(0)
    G = c.features - F
    G = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    flagged = {}
    for ref, query in (("train", "test"), ("train", "val"), ("val", "test")):
        ia = np.flatnonzero((c.splits == ref) & c.ok)
        ib = np.flatnonzero((c.splits == query) & c.ok)
        S = np.sort(G[ib] @ G[ia].T, axis=1)[:, ::-1]
        s1, s2 = S[:, 0], (S[:, 1] if S.shape[1] > 1 else np.full(len(S), -1.0))
        r = (1 - s1) / np.maximum(1 - s2, 1e-9)
        flagged[f"{ref}/{query}"] = int(((s1 >= exact) | ((r <= ratio) & (s1 >= min_similarity))).sum())
    return flagged


def test_near_duplicates_blockwise_equal_brute_force(study):
    c = FeatureCache.open(study["cache"])
    for ratio in (0.7, 0.95):
        got = near_duplicates(c, ratio=ratio, top=1000, block=5)  # many blocks on both sides
        assert got["counts"] == _brute_force_duplicates(c, ratio=ratio)
    assert got["n_pairs"] > 0
    ratios = [p["ratio"] for p in got["pairs"]]
    assert ratios == sorted(ratios) and len(ratios) == min(1000, got["n_pairs"])
    assert all(c.splits[p["a"]] != c.splits[p["b"]] for p in got["pairs"])
    assert all(p["second"] <= p["similarity"] for p in got["pairs"])


def test_planted_train_test_leaks_are_the_top_near_duplicates(tmp_path):
    """A test image copied from train and one re-encoded with a slight brightness shift are found first."""
    rng = np.random.default_rng(5)
    root = tmp_path / "leaky"
    for split, n in (("train", 12), ("test", 6)):
        for cls, base in (("warm", (200, 80, 40)), ("cool", (40, 90, 200))):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                arr = np.clip(np.array(base) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{k:02d}.png")
    shutil.copy(root / "train" / "warm" / "03.png", root / "test" / "warm" / "copy.png")
    shifted = np.asarray(Image.open(root / "train" / "cool" / "07.png")).astype(int) + 4
    Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)).save(root / "test" / "cool" / "brighter.png")
    # no val carved out of train: the planted originals must stay in train (splits are per-image hashes)
    res = embed_dataset(load_dataset(root, val_fraction=0.0), _spec(), cache_dir=tmp_path / "cache", progress=False)
    c = FeatureCache.open(res.path)
    dup = near_duplicates(c)
    top = {(str(c.ids[p["a"]]), str(c.ids[p["b"]])) for p in dup["pairs"][:2]}
    assert top == {("train/warm/03", "test/warm/copy"), ("train/cool/07", "test/cool/brighter")}, dup["pairs"][:4]
    assert dup["counts"]["train/test"] >= 2


def test_caches_only_then_rerun_with_new_heads_and_backbone_updates(study, tmp_path):
    out = tmp_path / "rep"
    index = build_report(cache_dir=study["root"] / "cache", out=out)
    html = index.read_text()
    assert "No fitted heads yet" in html and "Suspected label errors" in html
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
    from featpipe.report._data import ModelRun
    from featpipe.report._leaderboard import _leaderboard_fingerprint

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
    from featpipe.metrics import bootstrap_ci
    from featpipe.report._compare import not_separated, paired_vs_top
    from featpipe.report._outputs import within_sentence

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
    from featpipe.metrics import calibration

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
