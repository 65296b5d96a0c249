"""What the report writes besides plots: leaderboard.csv, summary.md and the rendered HTML."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from featpipe.report import _analysis
from featpipe.report._common import (
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


def _ci(r: dict[str, Any]) -> str:
    if r.get("test_ci_lo") is None:
        return "-"
    return f"[{_fmt(r['test_ci_lo'], 3)}, {_fmt(r['test_ci_hi'], 3)}]"


def within_sentence(rows: list[dict[str, Any]]) -> str:
    """The report's line saying which top runs the test set cannot tell apart."""
    names = ", ".join(f"{r['backbone']} + {r['head']}" for r in rows)
    return (f"The test scores of {names} lie within each other's 95% bootstrap interval: "
            "the test set does not separate them.")


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
        for a in d["analyses"]:
            li, dup = a["li"], a["dup"]
            sub = f" (subsample of {li['n_used']})" if li.get("subsampled") else ""
            if li.get("cv_accuracy") is not None:
                sub += f", out-of-fold probe accuracy {li['cv_accuracy']:.3f}"
            li_txt = (
                li["skipped"]
                or f"{li['n_flagged']} suspected label errors"
                + (" ((image, label) values)" if d["task"] == "multilabel" else "")
                + f" among {li['n_labeled']} rows{sub}"
            )
            L.append(
                f"- {a['backbone']}: {li_txt}; {dup['n_pairs']} near-duplicate pairs across splits "
                f"(nearest-neighbour distance ratio <= {dup['ratio']})"
            )
        L.append("")
    for b in ctx["boards"]:
        L.append(f"## Leaderboard: {b['dataset']} ({b['metric']}, sorted by validation)")
        L.append("")
        if b["chance"] is not None:
            L.append(
                f"Chance level ({b['chance_rule']}): {b['chance']:.4f}"
                + (f"; human baseline: {b['human']:.4f}" if b["human"] is not None else "")
            )
            L.append("")
        L.append("Validation scores are selection scores (the best configuration on those rows): optimistic.")
        L.append("")
        L.append("| backbone | layer | head | val (selection) | test | test 95% CI | gap | fit s |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in b["rows"]:
            L.append(
                f"| {r['backbone']} | {r['layer']} | {r['head']} | {_fmt(r['val'], 4)} | "
                f"{_fmt(r['test'], 4)} | {_ci(r)} | {_fmt(r['gap'], 4)} | {_fmt(r['fit_seconds'], 2)} |"
            )
        if b.get("within"):
            L += ["", within_sentence(b["within"])]
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
        loader=PackageLoader("featpipe.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f"] = _fmt
    env.filters["pct"] = lambda v: "–" if _analysis.finite(v) is None else f"{100 * float(v):.1f}%"
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    return env.get_template("index.html").render(css=css, **ctx)
