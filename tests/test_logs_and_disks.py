"""Output that stays readable in logs (progress off a terminal), on disks featpipe may not write, and for
bad numbers or bad pipeline files: one line, never a traceback."""

from __future__ import annotations

import ctypes
import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

from featpipe.cli import main
from featpipe.data import load_dataset
from featpipe.features.embed import embed_dataset
from featpipe.progress import progress_bar
from featpipe.runs.fit import fit_cache, open_cache, write_run

from conftest import TINY, TINY_SIZE, make_class_folders

EMBED = ["embed", "--backbone", TINY, "--no-pretrained", "--image-size", str(TINY_SIZE), "-q"]

# ------------------------------------------------------------------------------------------ progress


def test_progress_off_a_terminal_is_plain_lines_at_most_one_per_interval(monkeypatch):
    monkeypatch.setenv("FEATPIPE_PROGRESS_SECONDS", "3600")
    out = io.StringIO()
    bar = progress_bar(500, "embed x", file=out)
    for _ in range(500):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")
    assert len(lines) == 2, lines  # the start, then the end with the overall rate: nothing in between
    assert lines[0].startswith("embed x: 0/500 img (0%)")
    assert re.match(r"embed x: 500/500 img \(100%\), [\d.]+[kMG]?img/s, elapsed 00:00, ETA 00:00$", lines[1]), lines[1]


def test_progress_with_a_zero_interval_prints_every_update_however_fast(monkeypatch):
    monkeypatch.setenv("FEATPIPE_PROGRESS_SECONDS", "0")
    out = io.StringIO()
    bar = progress_bar(12, "embed x", file=out)
    for _ in range(3):  # three updates well inside tqdm's own 0.1 s redraw interval
        bar.update(4)
    bar.close()
    assert [ln.split(": ")[1].split()[0] for ln in out.getvalue().splitlines()] == ["0/12", "4/12", "8/12", "12/12"]


def test_progress_on_a_terminal_is_tqdm_bar():
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    with os.fdopen(follower, "w") as tty:
        bar = progress_bar(10, "embed x", file=tty)
        bar.update(10)
        bar.close()
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # Linux: EIO once the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    text = b"".join(chunks).decode()
    assert re.search(r"\r[^\n]", text) and "| 10/10 [" in text, text  # frames redrawn in place, a bar


@pytest.mark.slow
def test_embed_into_a_pipe_prints_plain_progress_lines(tmp_path):
    make_class_folders(tmp_path / "imgs", {"a": 6, "b": 6})
    env = dict(os.environ, FEATPIPE_PROGRESS_SECONDS="0")  # a line for every batch
    r = subprocess.run([sys.executable, "-m", "featpipe", *EMBED[:-1], "--data", "imgs", "--batch-size", "4",
                        "--workers", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    progress = [ln for ln in r.stderr.splitlines() if re.match(r"embed \S+: \d+/12 img \(\d+%\)", ln)]
    assert [ln.split(": ")[1].split()[0] for ln in progress] == ["0/12", "4/12", "8/12", "12/12"], r.stderr


# ----------------------------------------------------------------------- folders featpipe cannot write

_PR_CAPBSET_DROP = 24
_DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root ignore permission bits


def _drop_dac_caps() -> None:
    """Run as root that obeys permission bits, like any other user (the process keeps its uid and files)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_lock_out(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        r = subprocess.run(["touch", str(probe / "x")], preexec_fn=_drop_dac_caps if os.geteuid() == 0 else None,
                           capture_output=True)
    except OSError:
        return False
    finally:
        probe.chmod(0o755)
    return r.returncode != 0


def featpipe_locked_out(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a child that permission bits apply to (as root: without the capabilities that bypass them)."""
    return subprocess.run([sys.executable, "-m", "featpipe", *args], cwd=cwd, capture_output=True, text=True,
                          preexec_fn=_drop_dac_caps if os.geteuid() == 0 else None, timeout=300)


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "PermissionError" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), r.stderr
    return last


@pytest.fixture
def locked(tmp_path):
    """A dataset, a complete cache and a fitted model; ``ro/`` (holding a copy of the cache) is read-only."""
    if not _can_lock_out(tmp_path):
        pytest.skip("no way to make a folder unwritable for this process here")
    make_class_folders(tmp_path / "imgs", {"a": 6, "b": 6})
    res = embed_dataset(load_dataset(tmp_path / "imgs"), _tiny_spec(), cache_dir=tmp_path / "ro", progress=False)
    for r in fit_cache(open_cache(res.path), "logistic"):
        write_run(r, tmp_path / "models")
    for extra in (tmp_path / "ro").glob("*.lock*"):
        extra.unlink()  # as a cache copied onto a read-only share would be: the file alone
    _read_only(tmp_path / "ro")
    (tmp_path / "empty-ro").mkdir(mode=0o555)
    yield tmp_path
    for p in (tmp_path / "ro", tmp_path / "empty-ro"):
        p.chmod(0o755)


def _tiny_spec():
    from featpipe.backbones import resolve_spec

    return resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)


@pytest.mark.slow
def test_complete_cache_in_a_read_only_folder_is_used_without_a_lock(locked):
    (cache,) = (locked / "ro").glob("*.h5")
    before = (cache.read_bytes(), cache.stat().st_mtime_ns)
    r = featpipe_locked_out(*EMBED, "--data", "imgs", "--cache-dir", "ro", cwd=locked)
    assert r.returncode == 0, r.stderr
    assert "embedded 0 images" in r.stdout and "reused 12" in r.stdout, r.stdout
    assert sorted(p.name for p in (locked / "ro").iterdir()) == [cache.name]  # no lock file, no temp file
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == before
    r = featpipe_locked_out("fit-head", "--cache", str(cache), "--head", "logistic", "--out", "m2", cwd=locked)
    assert r.returncode == 0, r.stderr
    assert list((locked / "m2").glob("*/logistic/model.joblib"))


@pytest.mark.slow
def test_unwritable_cache_output_and_report_folders_are_one_line(locked):
    (cache,) = (locked / "ro").glob("*.h5")
    r = featpipe_locked_out(*EMBED, "--data", "imgs", "--cache-dir", "empty-ro", cwd=locked)
    _one_line_error(r, "cache folder empty-ro", "not writable")
    r = featpipe_locked_out(*EMBED, "--data", "imgs", "--cache-dir", "ro/sub", cwd=locked)
    _one_line_error(r, "cache folder ro/sub")
    r = featpipe_locked_out(*EMBED, "--data", "imgs", "--cache-dir", "ro", "--force", cwd=locked)
    _one_line_error(r, "cache folder ro", "--force")
    r = featpipe_locked_out("fit-head", "--cache", str(cache), "--out", "ro/models", cwd=locked)
    _one_line_error(r, "output folder ro/models")
    r = featpipe_locked_out("report", "--models", "models", "--out", "empty-ro", cwd=locked)
    _one_line_error(r, "report folder empty-ro")
    assert not any((locked / "empty-ro").iterdir())


# --------------------------------------------------------------------------- pipeline files, numbers


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, "data: café\n".encode("latin-1")], ids=["binary", "latin1"])
def test_non_utf8_pipeline_file_is_one_line(tmp_path, content):
    f = tmp_path / "study.yaml"
    f.write_bytes(content)
    r = CliRunner().invoke(main, ["run", str(f), "--check"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [r.output.strip()] and "not a YAML text file" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


IMPOSSIBLE = [
    (["embed", "--data", "d", "--batch-size", "0"], "--batch-size"),
    (["embed", "--data", "d", "--workers", "-1"], "--workers"),
    (["embed", "--data", "d", "--write-every", "0"], "--write-every"),
    (["embed", "--data", "d", "--image-size", "0"], "--image-size"),
    (["embed", "--data", "d", "--ray-actors", "0"], "--ray-actors"),
    (["fit-head", "--cache", "c.h5", "--min-positives", "-1"], "--min-positives"),
    (["fit-head", "--cache", "c.h5", "--seed", "-3"], "--seed"),
    (["finetune", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["finetune", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs"),
    (["finetune", "--data", "d", "--out", "o", "--lr", "0"], "--lr"),
    (["finetune", "--data", "d", "--out", "o", "--hflip", "1.5"], "--hflip"),
    (["finetune", "--data", "d", "--out", "o", "--workers", "-2"], "--workers"),
    (["finetune", "--data", "d", "--out", "o", "--threads", "0"], "--threads"),
    (["predict", "--model", "m.joblib", "x.png", "--batch-size", "0"], "--batch-size"),
    (["demo", "--per-class", "0"], "--per-class"),
]


@pytest.mark.parametrize(("args", "option"), IMPOSSIBLE, ids=lambda v: v if isinstance(v, str) else v[0])
def test_impossible_numbers_are_refused_by_the_command_line(tmp_path, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)  # were one accepted, nothing lands in the repository
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}'" in r.output, r.output

