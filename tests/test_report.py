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
    return {"root": root, "cache": res.path, "out": out, "models": root / "models"}


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


def test_report_page_loads_in_headless_chromium(study, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    dom, log = _dump_dom(study["out"] / "index.html", tmp_path)
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]  # anything the page wrote to the console
    assert not console, console
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert attrs.get("checked") == "1", "the page's self-check script did not run"
    ok, total = map(int, attrs["images-ok"].split("/"))
    assert total > 20 and ok == total, f"broken images: {attrs.get('broken-images')}"
    assert attrs["js-errors"] == "0", re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S).group(1)
    assert 'data-testid="leaderboard"' in dom and 'id="datasets"' in dom
    assert re.search(r'<img[^>]+data-kind="confusion-matrix"', dom)
    assert "cat/broken" not in dom or "not an image" in dom


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


def test_leaderboard_says_which_top_runs_the_test_set_cannot_separate():
    from featpipe.report._leaderboard import within_intervals
    from featpipe.report._outputs import within_sentence

    def row(name, test, lo, hi):
        return {"backbone": name, "head": "logistic", "test": test, "test_ci_lo": lo, "test_ci_hi": hi}

    rows = [row("a", 0.90, 0.85, 0.94), row("b", 0.88, 0.83, 0.92), row("c", 0.70, 0.62, 0.78),
            row("d", 0.84, 0.80, 0.86)]  # d's interval misses a's score: separated
    assert within_intervals(rows) == {0, 1}
    assert "a + logistic, b + logistic" in within_sentence([rows[i] for i in (0, 1)])
    assert within_intervals([rows[0], rows[2]]) == set()
    assert within_intervals([row("x", 0.9, None, None), rows[1]]) == set()  # runs without an interval
