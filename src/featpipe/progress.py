"""The one progress display: tqdm's bar on a terminal, a plain line every few seconds anywhere else.

A bar redraws itself with carriage returns ten times a second; written to a file or a pipe (CI, nohup,
Slurm) that is thousands of frames on one line. Off a terminal the same counts, rate and ETA (tqdm
computes them) are printed as one ordinary line every ``FEATPIPE_PROGRESS_SECONDS`` (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from tqdm import tqdm

LINE_SECONDS = 30.0
LINE_FORMAT = "{desc}: {n}/{total} {unit} ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"


def _line_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("FEATPIPE_PROGRESS_SECONDS", LINE_SECONDS)))
    except ValueError:
        return LINE_SECONDS


class _LogLines(tqdm):
    """tqdm that writes whole lines, at most one per interval, and a last one with the overall rate."""

    def __init__(self, *args: Any, every: float, **kwargs: Any) -> None:
        self._every, self._next_line, self._printed_n = every, 0.0, -1
        super().__init__(*args, **kwargs)

    def _line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._next_line, self._printed_n = time.monotonic() + self._every, self.n

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # type: ignore[override]
        # msg='' is close() clearing a terminal line: nothing to clear in a log
        if msg is None and time.monotonic() >= self._next_line:
            self._line()
        return False

    def close(self) -> None:
        if not self.disable and self.n != self._printed_n:
            self._ema_dt = lambda: None  # the last line gives the overall rate, as tqdm's own close does
            self._line()
        self.leave = False  # so tqdm's close writes no line end of its own
        super().close()


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "img", initial: int = 0,
                 leave: bool = True, file: IO[str] | None = None) -> tqdm:
    """A progress display for ``total`` units on ``file`` (stderr): a bar on a terminal, plain lines elsewhere."""
    file = file or sys.stderr
    common: dict[str, Any] = dict(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=file)
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(dynamic_ncols=True, leave=leave, **common)
    # unit_scale: unpadded rates (1.2k img/s); the counts are printed exactly by LINE_FORMAT.
    # mininterval=0: _LogLines throttles by its own interval; tqdm's 0.1 s default would drop fast batches
    return _LogLines(every=_line_seconds(), bar_format=LINE_FORMAT, miniters=1, mininterval=0, unit_scale=True,
                     **common)
