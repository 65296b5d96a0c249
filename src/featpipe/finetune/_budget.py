"""A fine-tune run inside a time budget: parse ``30m``, plan epochs from measured step times, and the
learning-rate schedule whose length the plan sets (and may shorten when the machine slows down)."""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featpipe.errors import FinetuneError

# a run without --epochs but with a budget still has an upper bound: early stopping ends tiny sets first
MAX_BUDGET_EPOCHS = 1000
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(hours?|h|minutes?|mins|min|m|seconds?|secs|sec|s)?")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float | int | None) -> float | None:
    """``"30m"``, ``"90s"``, ``"1h30m"``, ``"1.5h"`` or a number of seconds -> seconds. A duration parser is
    a few lines; no dependency does only this."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        t = str(text).strip().lower().replace(" ", "")
        pos, value = 0, 0.0
        for m in _DURATION.finditer(t):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s")[0]]
            pos = m.end()
        if not t or pos != len(t):
            raise FinetuneError(f"cannot read duration {text!r}; write e.g. 30m, 90s, 1h or 1h30m")
    if not value > 0 or not math.isfinite(value):
        raise FinetuneError(f"a time budget must be positive, got {text!r}")
    return value


def seconds_since_process_start() -> float:
    """How long this process has run (Linux ``/proc``, to about a second; 0 elsewhere): the command
    line's start-up (interpreter, imports) counts against ``--budget`` too."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(stat[19])  # field 22 of proc(5): start time after boot, in clock ticks
        boot = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime"))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    return max(0.0, time.time() - started)  # wall clock: /proc/uptime can lag in some VMs


# --------------------------------------------------------------------------------------- schedule


class LRPlan:
    """Learning-rate factor at step ``s`` (``torch.optim.lr_scheduler.LambdaLR``): linear warm-up from
    0.01 over ``warm`` steps, then cosine to 0 / one-cycle / constant, over ``total`` steps. Closed
    form, so a budget's plan can change ``total`` mid-run; its attributes (plain numbers) are what
    the scheduler's state_dict saves."""

    def __init__(self, kind: str, total: int, warm: int) -> None:
        self.kind = kind
        self.total = int(total)
        self.warm = int(warm)

    def __call__(self, s: int) -> float:
        total, warm = max(self.total, 1), self.warm
        if self.kind == "onecycle":  # torch's OneCycleLR curve (cos anneal, div 25, final div 1e4)
            up = max(max(float(warm), 0.05 * total) - 1.0, 1.0)
            if s <= up:
                return _cos(1 / 25, 1.0, s / up)
            return _cos(1.0, 1 / 25 / 1e4, min((s - up) / max(total - 1 - up, 1.0), 1.0))
        if s < warm:
            return 0.01 + 0.99 * s / warm
        if self.kind == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(s - warm, total - warm) / max(total - warm, 1)))


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total: int, budget: bool) -> int:
    """Warm-up steps: ``warmup_epochs`` of them, never the whole run; inside a budget at most a fifth
    of the planned steps (a 2-epoch plan must not spend half of it warming up)."""
    warm = min(int(round(warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    return min(warm, total // 5) if budget else warm


# ------------------------------------------------------------------------------------------ plan


@dataclass
class Estimates:
    """Measured costs the plan is made from (seconds)."""

    step: float  # one training step, data included
    val: float  # one validation pass
    final: float  # the closing pass: embed every split with the best checkpoint, write the artifacts
    save: float  # checkpoints and history at an epoch end


def plan_epochs(left: float, steps_per_epoch: int, steps_done: int, est: Estimates, max_epochs: int,
                epochs_done: int = 0) -> tuple[int, int]:
    """(epochs, total training steps) that fit in ``left`` seconds from now, the closing pass included.

    ``steps_done`` steps of epoch ``epochs_done + 1`` have run. At least the current epoch is planned
    (cut to the steps that fit, maybe none, when even it does not); never more than ``max_epochs``.
    """
    if epochs_done >= max_epochs:
        return epochs_done, steps_done
    left = left - est.final
    in_epoch = steps_done - epochs_done * steps_per_epoch
    this_epoch = (steps_per_epoch - in_epoch) * est.step + est.val + est.save
    if left < this_epoch:  # the current epoch does not fit: train what does, then validate once
        steps = max(0, int((left - est.val - est.save) // max(est.step, 1e-9)))
        return epochs_done + 1, steps_done + min(steps, steps_per_epoch - in_epoch)
    per_epoch = steps_per_epoch * est.step + est.val + est.save
    more = int((left - this_epoch) // max(per_epoch, 1e-9))
    epochs = max(epochs_done + 1, min(max_epochs, epochs_done + 1 + more))
    return epochs, epochs * steps_per_epoch


@dataclass
class Clock:
    """The budget's clock: ``start`` on ``time.monotonic()``, ``seconds`` allowed; ``margin`` is kept
    free for what no estimate covers (process exit, a slow disk)."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    @property
    def margin(self) -> float:
        return min(30.0, max(1.0, 0.02 * self.seconds))

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds to the deadline, less the margin."""
        return self.seconds - self.margin - self.elapsed()


class StepTimer:
    """Recent training-step time: the median of the last few steps, so a machine that slows down moves
    it within a few steps while one slow step (a page fault storm, a burst elsewhere) does not."""

    def __init__(self, window: int = 7) -> None:
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)

    @property
    def last(self) -> float | None:
        return self.recent[-1] if self.recent else None

    @property
    def value(self) -> float | None:
        return statistics.median(self.recent) if self.recent else None


def budget_record(clock: Clock | None) -> dict[str, Any] | None:
    """The ``budget`` entry of history.json / metrics.json before any plan."""
    if clock is None:
        return None
    return {"seconds": clock.seconds, "margin_seconds": clock.margin, "plans": [], "planned_epochs": None,
            "planned_seconds": None, "stopped_at_deadline": False, "actual_seconds": None}
