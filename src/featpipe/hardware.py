"""What this process may use of the machine: cores, the device, and what the CPU can do in bf16.

Every hardware question has its one answer here, probed once per process (torch is imported only by
the questions that need it, so the CLI starts fast). Two overrides, read on every call so tests and
CI can flip them: ``FEATPIPE_CPU_BF16=0|1`` says whether bf16 counts as fast on this CPU (what
``--precision auto`` picks), ``FEATPIPE_ONEDNN_BF16=0`` turns off oneDNN's bf16 convolutions (the
fused conv + activation path), so a CPU that has them also runs the path of one that has not.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import socket
import threading
from pathlib import Path
from typing import Any

from featpipe.errors import FeaturepipeError

CPU_BF16_ENV = "FEATPIPE_CPU_BF16"
ONEDNN_BF16_ENV = "FEATPIPE_ONEDNN_BF16"
# the /proc/cpuinfo flags that decide a CPU path (printed by benchmarks so figures are never mixed up)
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
                  "avx_vnni", "avx_ne_convert", "amx_tile", "amx_bf16", "amx_int8")


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota, if one is set."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """Cores this process may run on: the affinity mask (or os.cpu_count) capped by a cgroup quota."""
    # os.process_cpu_count (3.13+) covers affinity only; containers also cap CPUs by cgroup quota
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS / Windows
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


# --------------------------------------------------------------------------------------------- the CPU


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags as the kernel reports them (empty where it does not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name") or platform.processor() or platform.machine(), frozenset(
        fields.get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


@functools.cache
def _onednn_bf16_probe() -> bool:
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # the check torch's inductor uses
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def onednn_bf16() -> bool:
    """Whether oneDNN can run bf16 convolutions on this CPU at all (it needs AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT): the condition of the fused conv + activation op, which skips ATen's own check.
    ``FEATPIPE_ONEDNN_BF16=0`` answers no."""
    if os.environ.get(ONEDNN_BF16_ENV) == "0":
        return False
    return _onednn_bf16_probe()


def cpu_bf16_fast() -> bool:
    """Whether bf16 is faster than fp32 on this CPU: bf16 units (AVX512-BF16 or AMX) that oneDNN can use.

    A different question from :func:`onednn_bf16`: AVX-512 CPUs without bf16 units run oneDNN bf16,
    slowly. ``FEATPIPE_CPU_BF16=0|1`` overrides the answer."""
    env = os.environ.get(CPU_BF16_ENV)
    if env in ("0", "1"):
        return env == "1"
    # torch's get_cpu_capability() says AVX512 with or without bf16 units; the kernel's flags tell
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and onednn_bf16()


# --------------------------------------------------------------------------------------------- devices


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is here, else ``cpu``; a GPU asked for but absent is one line."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeaturepipeError("--device cuda was asked for but no CUDA GPU is available")
    return device


def auto_precision(device: str) -> str:
    """What ``--precision auto`` runs (embed and finetune): bf16 autocast on CUDA (fp16 where the GPU has
    no bf16) and on CPUs where bf16 is fast (measured 1.3-1.6x faster there, logistic-head test scores
    within 0.005 of fp32), fp32 elsewhere."""
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.startswith("cuda"):  # asked for a GPU that is not here: say what it would run
            return "bf16"
    return "bf16" if cpu_bf16_fast() else "fp32"


def precision_note(precision: str, device: str, asked: str) -> str | None:
    """One line to show before running ``precision`` on ``device`` (``asked``: what the user typed), or None."""
    if precision != "bf16" or device.startswith("cuda"):
        return None
    if asked == "auto":
        return "precision: bf16 (auto: this CPU computes bf16 natively; --precision fp32 for fp32 features)"
    if not cpu_bf16_fast():
        how = "oneDNN's fused bf16 convolutions" if onednn_bf16() else "plain autocast (oneDNN has no bf16 here)"
        return (f"precision: bf16 on a CPU without bf16 units ({cpu_model()}) runs through {how}, "
                "slower than fp32 here; --precision auto picks fp32")
    return None


def device_name() -> str:
    """The compute device in words, for reports: ``cpu``, ``cuda (NAME)`` or ``mps``."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name(0)})"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
    except Exception:  # noqa: BLE001 - hardware facts are best effort
        pass
    return "cpu"


def describe() -> dict[str, Any]:
    """The facts a benchmark or report prints, so figures from different machines are never mixed up."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": available_cpus(),
        "flags": [f for f in RELEVANT_FLAGS if f in cpu_flags()],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": onednn_bf16(),
        "bf16_fast": cpu_bf16_fast(),
        "device": device_name(),
    }


def describe_line() -> str:
    d = describe()
    return (f"machine: {d['cpu']}, {d['cores']} cores, flags {' '.join(d['flags']) or 'none'}, torch CPU "
            f"kernels {d['torch_cpu_capability']}, oneDNN bf16 {'yes' if d['onednn_bf16'] else 'no'}, bf16 fast "
            f"{'yes' if d['bf16_fast'] else 'no'}, device {d['device']}")


def reachable(host: str, timeout: float = 3.0) -> bool:
    """A TCP connect to ``host``:443 that gives up after ``timeout`` seconds, DNS included."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])
