"""Fine-tune section: loss and metric curves of every ``history.json`` under the models folder."""

from __future__ import annotations

import json
from typing import Any

from featpipe.reporting import _data, _plots
from featpipe.reporting._common import _fmt, _Plots


def history_sections(histories: list[_data.History], plots: _Plots) -> list[dict[str, Any]]:
    """One entry per fine-tune run: its curves plot and the last epochs."""
    hist = []
    for h in histories:
        last = next(
            (e.get("val_metric") for e in reversed(h.epochs) if e.get("val_metric") is not None), None
        )
        plot = (
            plots.get(
                f"ft-{_data.safe_slug(h.name)}-{_data.file_digest(h.path)}",
                lambda p, h=h: _plots.history(p, h.epochs, h.name),
            )
            if h.epochs
            else None
        )
        hist.append(
            {
                "name": h.name,
                "plot": plot,
                "n_epochs": len(h.epochs),
                "last_val": _fmt(last, 4),
                "epochs": h.epochs[-50:],
                "extra": json.dumps(h.extra, sort_keys=True)[:400] if h.extra else "",
            }
        )

    return hist
