import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API on this OS")
def test_available_cpus_respects_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from featpipe.hardware import available_cpus; print(available_cpus())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_overrides_are_read_on_every_call(monkeypatch):
    from featpipe import hardware

    monkeypatch.setenv(hardware.ONEDNN_BF16_ENV, "0")
    assert not hardware.onednn_bf16()
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "1")
    assert hardware.cpu_bf16_fast() and hardware.auto_precision("cpu") == "bf16"
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "0")
    assert not hardware.cpu_bf16_fast() and hardware.auto_precision("cpu") == "fp32"


def test_bf16_is_fast_only_where_onednn_can_run_it(monkeypatch):
    from featpipe import hardware

    monkeypatch.delenv(hardware.CPU_BF16_ENV, raising=False)
    monkeypatch.setenv(hardware.ONEDNN_BF16_ENV, "0")  # e.g. bf16 flags, but no oneDNN bf16 in this torch
    assert not hardware.cpu_bf16_fast() and hardware.auto_precision("cpu") == "fp32"


def test_the_precision_note_says_when_bf16_is_slow_here(monkeypatch):
    from featpipe import hardware

    monkeypatch.setenv(hardware.CPU_BF16_ENV, "0")
    monkeypatch.setenv(hardware.ONEDNN_BF16_ENV, "0")
    note = hardware.precision_note("bf16", "cpu", "bf16")
    assert "plain autocast" in note and "slower than fp32" in note and "\n" not in note
    assert hardware.precision_note("fp32", "cpu", "fp32") is None
    assert hardware.precision_note("bf16", "cuda", "bf16") is None
    assert "natively" in hardware.precision_note("bf16", "cpu", "auto")


def test_describe_names_the_cpu_and_its_capabilities():
    from featpipe import hardware

    line = hardware.describe_line()
    assert hardware.cpu_model() in line and "oneDNN bf16" in line and f"{hardware.available_cpus()} cores" in line
    assert set(hardware.describe()["flags"]) <= set(hardware.cpu_flags())
