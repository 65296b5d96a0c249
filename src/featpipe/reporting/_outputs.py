"""What the report writes besides plots: leaderboard.csv, summary.md and the rendered HTML."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from featpipe.reporting import _analysis
from featpipe.reporting._common import (
    _fmt,
)

CSV_COLS = [
    "dataset",
    "backbone",
    "layer",
    "head",
    "metric",
    "val",
    "test",
    "test_ci_lo",
    "test_ci_hi",
    "vs_top",
    "vs_top_lo",
    "vs_top_hi",
    "ece_test",
    "small_test",
    "selection",
    "train",
    "gap",
    "accuracy_test",
    "balanced_accuracy_test",
    "f1_macro_test",
    "roc_auc_test",
    "average_precision_test",
    "embed_seconds",
    "fit_seconds",
    "feature_dim",
    "chance",
    "human_baseline",
    "run",
    "dir",
]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r[k]))
                for k in CSV_COLS
            }
        )
    path.write_text(buf.getvalue())


LABEL_ISSUES_CSV = "label_issues.csv"
LABEL_ISSUES_COLS = ["path", "split", "given", "suggested", "score"]


def write_label_issues(path: Path, rows: list[dict[str, Any]]) -> None:
    """``label_issues.csv``: one row per flagged image of every split, lowest ``score`` (the out-of-fold
    probability of the given label) first within a dataset; only the header when nothing is flagged."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LABEL_ISSUES_COLS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "score": f"{float(r['score']):.6g}"})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def count_label_issues(out: str | Path) -> int | None:
    """How many images ``out/label_issues.csv`` flags (``None`` when the report has none)."""
    path = Path(out) / LABEL_ISSUES_CSV
    if not path.exists():
        return None
    with path.open(newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def _ci(r: dict[str, Any]) -> str:
    if r.get("test_ci_lo") is None:
        return "-"
    return f"[{_fmt(r['test_ci_lo'], 3)}, {_fmt(r['test_ci_hi'], 3)}]"


def _signed(x: Any) -> str:
    v = _analysis.finite(x)
    return "–" if v is None else f"{v:+.3f}"


def _vs_top(r: dict[str, Any]) -> str:
    if r.get("vs_top") is None:
        return "-"
    return f"{_signed(r['vs_top'])} [{_signed(r['vs_top_lo'])}, {_signed(r['vs_top_hi'])}]"


def within_sentence(rows: list[dict[str, Any]], metric: str = "score") -> str:
    """The report's line saying which runs the test set does not separate from the top run (``rows[0]``)."""
    names = ", ".join(f"{r['backbone']} + {r['head']}" for r in rows[1:])
    top = rows[0]
    return (f"The test set does not separate {names} from the top run {top['backbone']} + {top['head']}: "
            f"the paired bootstrap 95% interval of the difference in test {metric}, on the same test images, holds 0.")


def consensus_words(n: int) -> str:
    """``both checks`` / ``all 3 checks``."""
    return "both checks" if n == 2 else f"all {n} checks"


def label_issue_sentence(li: dict[str, Any]) -> str:
    """One line on the label check: the estimate and its basis, or why nothing was judged."""
    probe = li.get("probe") or {}
    acc = li.get("oof_accuracy")
    model = f"{probe.get('head', '?')} head on {probe.get('backbone') or 'the features'}"
    if acc is not None:
        model += f", out-of-fold accuracy {acc:.3f}"
    if li.get("skipped"):
        return f"label errors not checked: {li['skipped']}"
    if li.get("too_weak"):
        return f"label errors not judged: the checking model ({model}) is too weak: {li['too_weak']}"
    n = li.get("n_used") or 0
    est = li.get("n_estimated") or 0.0
    sub = f", seeded subsample of {n} of {li['n_labeled']} rows" if li.get("subsampled") else ""
    skipped = "; not used: " + ", ".join(li["not_used"]) if li.get("not_used") else ""
    k = int(li.get("consensus") or 1)
    if k >= 2 and li.get("per_label") is None:
        used = [c for c in li.get("checks") or [] if c.get("used")]
        each = "; ".join(f"{c['name']}, out-of-fold accuracy {c['oof_accuracy']:.3f}, "
                         f"alone {c['n_flagged']} flags" for c in used)
        lo, hi = min(c["n_estimated"] for c in used), max(c["n_estimated"] for c in used)
        return (f"{li['n_flagged']} suspected label issues among {n} labelled rows ({100 * est / max(n, 1):.1f}%), "
                f"flagged by {consensus_words(k)} in {LABEL_ISSUES_CSV} ({each}; {li['folds']}-fold{sub}); each "
                f"check alone estimates {lo:.0f}-{hi:.0f}, a count that includes its own confident mistakes; "
                f"{li['method']}{skipped}")
    return (f"estimated {est:.0f} label issues among {n} labelled rows ({100 * est / max(n, 1):.1f}%); "
            f"{li['n_flagged']} images flagged in {LABEL_ISSUES_CSV} ({model}, {li['folds']}-fold{sub}; "
            f"{li['method']}{skipped})")


def near_copy_sentence(q: dict[str, Any]) -> str:
    """One line on the near-copy search: its calibrated threshold, or why nothing was searched."""
    cal, near = q["cal"], q["near"]
    if cal.get("skipped"):
        return f"near-copies not searched: {cal['skipped']}"
    base = (f"{cal['n_copies']} synthetic copies (crop, resize, JPEG re-encode of {cal['n_images']} train images) "
            f"keep a median cosine of {cal['copy_median']:.3f} to their original; distinct train images reach "
            f"{cal['distinct_median']:.3f} to their nearest neighbour")
    if not cal["separable"]:
        return (f"near-copies not flagged: this backbone does not tell copies from similar images here ({base}; "
                f"only {100 * cal['copies_found']:.0f}% of the copies would be found)")
    return (f"{near['n_pairs']} near-copy pairs across splits at cosine >= {cal['threshold']:.3f} ({base}; "
            f"{100 * cal['copies_found']:.0f}% of the copies are found at this threshold, "
            f"{100 * (cal['distinct_above'] or 0):.1f}% of distinct images reach it)")


def _quality_md(q: dict[str, Any]) -> list[str]:
    ex = q["exact"]
    return [
        f"- label check on {q['backbone']}: {label_issue_sentence(q['li'])}",
        f"- exact duplicates: {ex['n_groups']} groups of identical images ({ex['n_rows']} rows), "
        f"{ex['n_cross_split']} spanning two splits, {ex['n_label_conflicts']} with different labels",
        f"- {near_copy_sentence(q)}",
    ]


def _summary_md(ctx: dict[str, Any]) -> str:
    L = [
        "# featpipe report",
        "",
        f"Generated {ctx['facts']['created']} by featpipe {ctx['facts']['featpipe']}.",
        "",
    ]
    for d in ctx["datasets"]:
        L.append(f"## Dataset {d['name']} ({d['task']}, {len(d['classes'])} classes)")
        L.append("")
        L.append(
            f"- {d['n_images']} images, {d['n_ok']} embedded, {d['n_failed']} failed, "
            f"{d['n_skipped']} skipped by the loader"
        )
        q = d.get("quality")
        if q:
            L += _quality_md(q)
        L.append("")
    for b in ctx["boards"]:
        L.append(f"## Leaderboard: {b['dataset']} ({b['metric']}, sorted by validation)")
        L.append("")
        if b["chance"] is not None:
            L.append(
                f"Chance level: {b['chance']:.4f}, the best constant predictor's {b['metric']} on the "
                f"{b['chance_n']} {b['chance_split']} rows ({b['chance_rule']})"
                + (f"; a uniform random guess scores {b['chance_uniform']:.4f}" if b.get("chance_uniform") else "")
                + (f"; human baseline: {b['human']:.4f}" if b["human"] is not None else "")
            )
            L.append("")
        if b.get("small"):
            L += [f"**Small test set**: {b['small']}. Test scores, intervals and differences are not reliable.", ""]
        L.append("Validation scores are selection scores (the best configuration on those rows): optimistic.")
        L.append("")
        L.append("| backbone | layer | head | val (selection) | test | test 95% CI | vs #1 (paired 95%) | ECE | gap "
                 "| fit s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in b["rows"]:
            L.append(
                f"| {r['backbone']} | {r['layer']} | {r['head']} | {_fmt(r['val'], 4)} | "
                f"{_fmt(r['test'], 4)} | {_ci(r)}{' !' if r.get('small_test') else ''} | {_vs_top(r)} | "
                f"{_fmt(r.get('ece_test'), 3)} | {_fmt(r['gap'], 4)} | {_fmt(r['fit_seconds'], 2)} |"
            )
        if b.get("within"):
            L += ["", within_sentence(b["within"], b["metric"])]
        best = b["rows"][0] if b["rows"] else None
        if best:
            L += [
                "",
                f"Best on validation: **{best['backbone']} + {best['head']}** "
                f"(val {_fmt(best['val'], 4)}, test {_fmt(best['test'], 4)}).",
            ]
        L.append("")
    if ctx["histories"]:
        L.append("## Fine-tune runs")
        L.append("")
        for h in ctx["histories"]:
            L.append(f"- {h['name']}: {h['n_epochs']} epochs, last val metric {h['last_val']}")
        L.append("")
    if ctx["problems"]:
        L.append("## Problems")
        L.append("")
        L += [f"- {a}: {b}" for a, b in ctx["problems"]]
        L.append("")
    return "\n".join(L)


def _render(ctx: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("featpipe.reporting", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f"] = _fmt
    env.filters["sf"] = _signed
    env.filters["checks"] = consensus_words
    env.filters["pct"] = lambda v: "–" if _analysis.finite(v) is None else f"{100 * float(v):.1f}%"
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    return env.get_template("index.html").render(css=css, **ctx)
