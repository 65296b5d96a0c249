"""The pipeline-key table of docs/pipelines.md, generated from the schema models (`featpipe run --schema`)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic_core import PydanticUndefined

from featpipe.pipeline._schema import SECTIONS, in_pipeline


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


def field_type(field: Any) -> str:
    """A field's type as the docs show it (a field may name its own: ``json_schema_extra={"type": ...}``)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("type") or _type_name(field.annotation)


def field_default(field: Any) -> str:
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
            if not in_pipeline(field):
                continue
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | {field_type(field)} | {field_default(field)} | {desc} |")
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


def _option_sections() -> list[tuple[str, Any, str]]:
    """Each stage's section, the pipeline key prefix of its fields, and the commands whose options they are."""
    from featpipe.pipeline._schema import (
        BackboneConfig,
        DataConfig,
        EmbedConfig,
        FinetuneConfig,
        FitConfig,
        ReportConfig,
    )

    return [("data.", DataConfig, "`embed`, `finetune`, `fit-head` (with `--data`)"),
            ("backbones[].", BackboneConfig, "`embed` (`--backbone` repeatable), `fit-head` (with `--data`)"),
            ("embed.", EmbedConfig, "`embed`"), ("fit.", FitConfig, "`fit-head`"),
            ("finetune[].", FinetuneConfig, "`finetune`"), ("report.", ReportConfig, "`report`")]


def _flag(name: str, field: Any) -> str:
    from featpipe.sections import cli_flag

    flag = cli_flag(name, field)
    if flag is None:
        return "(pipeline only)"
    inner = field.annotation
    if inner is bool or (field.default is None and "bool" in str(inner)):
        if field.default is True or field.default is None:
            return f"`{flag}` / `--no-{flag[2:]}`"
    return f"`{flag}`"


def options_markdown() -> str:
    """docs/options.md: every option of the stage commands with its pipeline key, from the config sections
    (`featpipe run --options`; a test keeps the committed file equal to this)."""
    from featpipe.sections import in_pipeline

    out = ["# Options", "",
           "Generated from the config sections (`featpipe run --options > docs/options.md`); do not edit by hand.",
           "Each setting has one name: the pipeline key `section.name` is the option `--name-with-dashes` of the",
           "commands below, and the Python functions take the same section objects (`featpipe.data.config.DataConfig`,",
           "`featpipe.backbones.config.BackboneConfig`, `featpipe.features.config.EmbedConfig`,",
           "`featpipe.runs.config.FitConfig`, `featpipe.finetune.FinetuneConfig`, `featpipe.reporting.config.ReportConfig`).",
           "Options only the command line has (`--cache`, `--out`, `--quiet`, ...) are listed by `featpipe COMMAND --help`;",
           "the whole pipeline file by `featpipe run --schema`."]
    for prefix, model, commands in _option_sections():
        doc = (model.__doc__ or "").strip().splitlines()[0]
        out += ["", f"## {prefix.rstrip('.')}", "", f"{doc} Options of {commands}.", "",
                "| option | pipeline key | type | default | description |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = f"`{prefix}{name}`" if in_pipeline(field) else "(study-wide, see `--help`)"
            desc = (field.description or "").replace("|", "\\|")
            out.append(f"| {_flag(name, field)} | {key} | {field_type(field)} | {field_default(field)} | {desc} |")
    return "\n".join(out) + "\n"
