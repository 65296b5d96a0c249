"""The package layout stays the stages': one-way layers (import-linter's contract in pyproject.toml), no
import circles, and no private module of one package imported by another (each package's face is its
``__init__``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("featpipe")


def _package(graph, module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or graph.find_children(module) else "<top>"


def test_import_linter_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "KEPT" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_import_circles(graph):
    circles = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                      if graph.find_shortest_chain(importer=b, imported=a)})
    assert not circles, circles


def test_no_private_module_is_imported_from_another_package(graph):
    leaks = [f"{a} imports {b}" for a in sorted(graph.modules) for b in graph.find_modules_directly_imported_by(a)
             if any(p.startswith("_") and not p.startswith("__") for p in b.split(".")[1:])
             and _package(graph, a) != _package(graph, b)]
    assert not leaks, leaks
