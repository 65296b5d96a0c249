"""Whole studies from one validated YAML file: dataset -> embed per backbone -> heads (and fused heads)
-> fine-tune -> predict -> report, skipping every stage whose inputs did not change.

Python use::

    from featpipe.pipeline import load_pipeline, Study
    study = Study(load_pipeline("pipelines/scenes.yaml", ["data.path=~/scenes"]))
    for step in study.plan(): print(step.line())
    study.run()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from featpipe.pipeline._load import LoadedPipeline, load_pipeline, parse_key, validate_dict
from featpipe.pipeline._run import Step, Study, StudyResult, data_fingerprint
from featpipe.pipeline._schema import SECTIONS, Pipeline
from featpipe.pipeline._schema_doc import options_markdown, readme_with_schema, schema_markdown, update_readme


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A validated pipeline file as a plain dict (every key present, defaults filled in)."""
    return load_pipeline(path, overrides).config.model_dump()


def run_pipeline(cfg: dict[str, Any] | str | Path, *, overrides: list[str] | tuple[str, ...] = (),
                 progress: bool = True, echo: Callable[[str], Any] = print, skip_unavailable: bool = False,
                 base: str | Path = ".") -> dict[str, Any]:
    """Validate and run a pipeline (a file path, or a dict whose relative paths are relative to ``base``)."""
    loaded = load_pipeline(cfg, overrides) if isinstance(cfg, (str, Path)) else validate_dict(cfg, base)
    return Study(loaded, progress=progress, echo=echo, skip_unavailable=skip_unavailable).run().as_dict()


__all__ = ["SECTIONS", "LoadedPipeline", "Pipeline", "Step", "Study", "StudyResult", "data_fingerprint",
           "load_config", "load_pipeline", "options_markdown", "parse_key", "readme_with_schema", "run_pipeline", "schema_markdown",
           "update_readme", "validate_dict"]
