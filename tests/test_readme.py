"""The README's Python walk-through runs as it is written.

The fenced ``python`` block right under the README's ``readme-python-walkthrough`` marker is extracted and
run unchanged, default backbone (``efficientnet_lite0``, offline package weights) included, in a fresh
interpreter whose working folder holds what the README tells the reader to make: ``photos/`` (class
folders; here tiny ones from conftest's ``make_class_folders``) and ``new_photos/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_class_folders

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- readme-python-walkthrough"


def walkthrough(text: str) -> str:
    """The code of the ```python block that directly follows the marker comment."""
    _, marker, rest = text.partition(MARKER)
    if not marker:
        raise AssertionError(f"README.md has no {MARKER} ... --> marker")
    after = rest.split("\n", 1)[1]  # past the marker's own line
    m = re.match(r"```python\n(.*?)\n```", after, re.S)
    if not m:
        raise AssertionError("the README's walk-through marker is not directly followed by a ```python block")
    return m.group(1)


def test_walkthrough_is_the_block_under_the_marker():
    text = "intro\n<!-- readme-python-walkthrough: x -->\n```python\nprint(1)\n```\n```python\nprint(2)\n```\n"
    assert walkthrough(text) == "print(1)"
    with pytest.raises(AssertionError, match="directly followed"):
        walkthrough("<!-- readme-python-walkthrough -->\n\ntext\n```python\nprint(1)\n```\n")
    code = walkthrough(README.read_text())
    assert "import featpipe" in code and '"efficientnet_lite0"' in code


@pytest.mark.slow
def test_readme_python_walkthrough_runs_as_written(tmp_path):
    code = walkthrough(README.read_text())
    make_class_folders(tmp_path / "photos", {"cat": 15, "dog": 15})
    make_class_folders(tmp_path / "new_photos", {"cat": 2, "dog": 2}, seed=1)
    env = {**os.environ, "FEATPIPE_OFFLINE": "1", "FEATPIPE_CPU_BF16": "0", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    lines = r.stdout.splitlines()
    scored = {ln.split()[0] for ln in lines if re.fullmatch(r"\w+ [01](\.\d+)?(e-?\d+)?", ln)}
    assert scored == {"logistic", "mlp", "lgbm"}, r.stdout
    printed = [re.findall(r"'(\w+)'", ln) for ln in lines if re.fullmatch(r"\[('\w+'\s*)+\]", ln)]
    assert [len(p) for p in printed] == [4, 3], r.stdout  # the bundle on new_photos/, the pipeline on 3 paths
    assert {c for p in printed for c in p} <= {"cat", "dog"}, r.stdout
    assert (tmp_path / "report" / "index.html").is_file()
    assert len(list((tmp_path / "models").glob("*/logistic/model.joblib"))) == 1
    assert len(list((tmp_path / "cache").glob("photos__efficientnet_lite0__*.h5"))) == 1
