"""The base of every stage's config section (pydantic): unknown keys refused, assignments validated.

Each stage keeps its own section beside its code (``data.config``, ``backbones.config``,
``features.config``, ``runs.config``, ``finetune``, ``reporting.config``); the pipeline file composes
them, the command line generates its options from their fields, and the library functions take them.
A field's ``json_schema_extra`` may say how the front ends show it: ``{"cli": False}`` leaves it to
pipeline files, ``{"pipeline": False}`` to the command line (the study sets it once), ``{"flag": "--x"}``
names a hand-written option, ``{"choices": "module:ATTR"}`` lists choices read on first use,
``{"type": ..., "metavar": ...}`` how a text value is shown.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    """One stage's parameters; a field's description is its documentation, in pipeline docs and ``--help``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def shorthand(key: str) -> Any:
    """A bare string stands for ``{key: string}`` (``backbones: [resnet50]``, ``data: photos/``)."""

    def before(cls, v: Any) -> Any:
        return {key: v} if isinstance(v, str) else v

    return model_validator(mode="before")(classmethod(before))


def extra(field: Any) -> dict[str, Any]:
    """A field's ``json_schema_extra`` (the front-end hints above)."""
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def cli_flag(name: str, field: Any) -> str | None:
    """The command-line option of a field: ``--name-with-dashes`` (one name everywhere), or None when the field
    is a pipeline key only."""
    e = extra(field)
    if not e.get("cli", True):
        return None
    return e.get("flag") or "--" + name.replace("_", "-")


def in_pipeline(field: Any) -> bool:
    """Whether a field is a key of pipeline files (some are set once for the whole study instead)."""
    return extra(field).get("pipeline", True)
