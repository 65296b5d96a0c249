"""Run facts: versions, seeds, cache keys, device and host."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featpipe.hardware import available_cpus, cpu_model, device_name
from featpipe.reporting import _data
from featpipe.reporting._common import (
    _fmt,
)
from featpipe.versions import FEATPIPE_VERSION


def _run_facts(caches: list[Any], runs: list[_data.ModelRun]) -> dict[str, Any]:
    from importlib import metadata

    libs = {}
    for pkg in (
        "numpy",
        "scikit-learn",
        "torch",
        "timm",
        "h5py",
        "lightgbm",
        "matplotlib",
        "jinja2",
        "pillow",
    ):
        try:
            libs[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    device = device_name()
    cache_rows = []
    for c in caches:
        t = c.attrs.get("timings") or {}
        cache_rows.append(
            {
                "file": Path(c.path).name,
                "key": str(c.key)[:16],
                "seed": c.seed,
                "split_seed": c.dataset.get("split_seed"),
                "backbone": json.dumps(c.backbone, sort_keys=True),
                "dim": c.feature_dim,
                "rows": len(c),
                "embed_seconds": _fmt(c.embed_seconds, 1),
                "device": t.get("device", "?"),
                "host": t.get("host", "?"),
                "versions": ", ".join(f"{k} {v}" for k, v in sorted((c.versions or {}).items())),
            }
        )
    head_seeds = sorted({str(r.metrics.get("seed")) for r in runs})
    model_versions = sorted(
        {", ".join(f"{k} {v}" for k, v in sorted((r.metrics.get("versions") or {}).items())) for r in runs}
    )
    return {
        "featpipe": FEATPIPE_VERSION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": f"{platform.machine()} ({cpu_model()})",
        "cpus": available_cpus(),
        "torch_device": device,
        "libs": libs,
        "caches": cache_rows,
        "head_seeds": head_seeds,
        "model_versions": model_versions,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
