"""The pipeline-key table of docs/pipelines.md, generated from the schema models (`featpipe run --schema`)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic_core import PydanticUndefined

from featpipe.pipeline._schema import SECTIONS


def _type_name(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in inner)
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(t, type) and hasattr(t, "model_fields"):
        return "mapping"
    if isinstance(t, type):
        return {"str": "text", "int": "int", "float": "number", "bool": "bool"}.get(t.__name__, t.__name__)
    return str(t)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        v = field.default_factory()
        if hasattr(v, "model_dump"):
            return ""
        if isinstance(v, list) and v and hasattr(v[0], "model_dump"):
            v = [x.model_dump(exclude_defaults=True).get("name", x) for x in v]
        return f"`{v}`"
    return "" if field.default is None or field.default is PydanticUndefined else f"`{field.default}`"


def schema_markdown() -> str:
    """One Markdown table row per key: key, type, default, description."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for prefix, model in SECTIONS:
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
    return "\n".join(lines) + "\n"


START, END = "<!-- pipeline-schema:start (generated: featpipe run --schema) -->", "<!-- pipeline-schema:end -->"


def readme_with_schema(text: str) -> str:
    """``text`` (a Markdown page) with the block between the schema markers replaced by :func:`schema_markdown`."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError("the page has no pipeline-schema markers")
    return f"{head}{START}\n{schema_markdown()}{END}{tail}"


def update_readme(path: str = "docs/pipelines.md") -> bool:
    """Rewrite the schema table in ``path`` (the pipelines page of the docs); True when it changed."""
    from pathlib import Path

    p = Path(path)
    old = p.read_text()
    new = readme_with_schema(old)
    if new != old:
        p.write_text(new)
    return new != old
