"""Pipeline file -> validated :class:`Pipeline`: YAML with line numbers, ``--set`` overrides, errors that
name the file, line and field (``x.yaml:7: fit.metrc: unknown key (did you mean 'metric'?)``)."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from featpipe.errors import PipelineError
from featpipe.pipeline._schema import Pipeline

Loc = tuple[str | int, ...]


@dataclass
class LoadedPipeline:
    """A validated pipeline plus where it came from (for relative paths and error lines)."""

    config: Pipeline
    file: Path
    lines: dict[Loc, str] = field(default_factory=dict)

    def where(self, loc: Loc) -> str:
        """``file:line`` (or ``--set KEY``) of the nearest key at or above ``loc``."""
        return _where(self.file, self.lines, loc)

    def error(self, loc: Loc, msg: str) -> PipelineError:
        return PipelineError(f"{self.where(loc)}: {dotted(loc)}: {msg}")


def dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def _where(file: Path, lines: dict[Loc, str], loc: Loc) -> str:
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return str(file)


def _line_map(node: yaml.Node, file: str, loc: Loc = ()) -> dict[Loc, str]:
    """Path of every key and list item -> ``file:line`` (yaml.compose keeps the marks; safe_load drops them)."""
    out: dict[Loc, str] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            sub = (*loc, k.value)
            out[sub] = f"{file}:{k.start_mark.line + 1}"
            out.update(_line_map(v, file, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            sub = (*loc, i)
            out[sub] = f"{file}:{v.start_mark.line + 1}"
            out.update(_line_map(v, file, sub))
    return out


_TOKEN = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")


def parse_key(key: str) -> Loc:
    """``backbones[0].weights`` -> ``("backbones", 0, "weights")``."""
    parts: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(key):
        gap = key[pos:m.start()]
        if gap not in ("", ".") or (gap == "" and pos and m.group(1)):
            raise PipelineError(f"--set {key}: cannot parse the key (expected e.g. data.path or backbones[0].weights)")
        parts.append(m.group(1) if m.group(1) else int(m.group(2)))
        pos = m.end()
    if pos != len(key) or not parts or isinstance(parts[0], int):
        raise PipelineError(f"--set {key}: cannot parse the key (expected e.g. data.path or backbones[0].weights)")
    return tuple(parts)


# list items and sections that accept a bare string, and the key the string stands for
_SHORTHAND = {"data": "path", "backbones": "name", "heads": "name", "predict": "path"}


def apply_override(raw: dict[str, Any], item: str, lines: dict[Loc, str]) -> None:
    """Apply one ``KEY=VALUE`` (value parsed as a YAML scalar) to the raw mapping."""
    if "=" not in item:
        raise PipelineError(f"--set {item}: expected KEY=VALUE")
    key, text = item.split("=", 1)
    loc = parse_key(key.strip())
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for i, part in enumerate(loc[:-1]):
        nxt = loc[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise PipelineError(f"--set {key}: {dotted(loc[:i])} has no item {part}")
            if isinstance(node[part], str) and loc[i - 1] in _SHORTHAND:
                node[part] = {_SHORTHAND[str(loc[i - 1])]: node[part]}
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise PipelineError(f"--set {key}: {dotted(loc[:i])} is not a mapping")
        if isinstance(node.get(part), str) and part in _SHORTHAND and not isinstance(nxt, int):
            node[part] = {_SHORTHAND[part]: node[part]}
        node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    last = loc[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise PipelineError(f"--set {key}: {dotted(loc[:-1])} has no item {last}")
        node[last:last + 1] = [value]
    else:
        if not isinstance(node, dict):
            raise PipelineError(f"--set {key}: {dotted(loc[:-1])} is not a mapping")
        node[last] = value
    for k in [k for k in lines if k[:len(loc)] == loc]:
        del lines[k]
    lines[loc] = f"--set {key}"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model that holds the last key of ``loc`` (for 'did you mean' suggestions)."""
    t: Any = Pipeline
    for part in loc[:-1]:
        t = _unwrap(t)
        if isinstance(part, int):
            args = typing.get_args(t)
            t = args[0] if args else None
        elif isinstance(t, type) and issubclass(t, BaseModel) and part in t.model_fields:
            t = t.model_fields[part].annotation
        else:
            return None
    t = _unwrap(t)
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _unwrap(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if args else t
    return t


def _message(err: dict[str, Any]) -> str:
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        near = difflib.get_close_matches(str(loc[-1]), list(model.model_fields) if model else [], n=1)
        return "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
    if err["type"] == "missing":
        return "missing (required)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("value_error", "assertion_error") and "input" in err:
        msg += f" (got {err['input']!r})"[:120]
    return msg


def _line_order(item: tuple[str, str]) -> tuple[int, str]:
    where = item[0]
    tail = where.rsplit(":", 1)[-1]
    return (int(tail) if tail.isdigit() else 10**9, item[1])


def validate(raw: Any, file: Path, lines: dict[Loc, str]) -> LoadedPipeline:
    """Validate a raw mapping; every problem becomes a ``file:line: field: message`` line."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{file}: a pipeline is a mapping with at least 'data' and 'backbones'")
    try:
        config = Pipeline.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, int) or not p[:1].isupper())  # drop model names
            msgs.append((_where(file, lines, loc), f"{dotted(loc)}: {_message(err)}"))
        raise PipelineError("\n".join(f"{w}: {m}" for w, m in sorted(dict.fromkeys(msgs), key=_line_order))) from None
    loaded = LoadedPipeline(config, file, lines)
    check_combinations(loaded)
    return loaded


def check_combinations(p: LoadedPipeline) -> None:
    """Cross-field rules the field types cannot say."""
    c = p.config
    problems: list[str] = []
    refs = [b.ref for b in c.backbones]
    ids = [b.id for b in c.backbones if b.id]
    for i, b in enumerate(c.backbones):
        if b.id and ids.count(b.id) > 1:
            problems.append(f"{p.where(('backbones', i, 'id'))}: backbones[{i}].id: {b.id!r} is used twice")
    for g, group in enumerate(c.fuse):
        if len(group) < 2:
            problems.append(f"{p.where(('fuse', g))}: fuse[{g}]: a fused head needs at least two backbones")
        for j, r in enumerate(group):
            if r not in refs:
                near = difflib.get_close_matches(r, refs, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; backbones are: {', '.join(refs)}"
                problems.append(f"{p.where(('fuse', g, j))}: fuse[{g}][{j}]: unknown backbone {r!r}{hint}")
            if refs.count(r) > 1:
                problems.append(f"{p.where(('fuse', g, j))}: fuse[{g}][{j}]: {r!r} names several backbones; "
                                "give them an 'id' and fuse by id")
        if len(set(group)) != len(group):
            problems.append(f"{p.where(('fuse', g))}: fuse[{g}]: a backbone is listed twice")
    if c.fuse and not c.heads:
        problems.append(f"{p.where(('fuse',))}: fuse: needs at least one head in 'heads'")
    if c.predict and not c.heads and not c.finetune:
        problems.append(f"{p.where(('predict',))}: predict: needs a model: list 'heads' or 'finetune' runs")
    if c.embed.address and c.embed.engine != "ray":
        problems.append(f"{p.where(('embed', 'address'))}: embed.address: applies to engine 'ray' only")
    for i, b in enumerate(c.backbones):
        if (b.name == "sface" or b.name.endswith(".onnx")) and b.layer:
            problems.append(f"{p.where(('backbones', i, 'layer'))}: backbones[{i}].layer: ONNX backbones cannot be cut")
    if problems:
        raise PipelineError("\n".join(problems))


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> LoadedPipeline:
    """Read, override (``KEY=VALUE``) and validate a pipeline file."""
    file = Path(path)
    if not file.is_file():
        raise PipelineError(f"pipeline file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{file}: not a YAML text file (byte {e.object[e.start]:#04x} at offset {e.start} "
                            "is not UTF-8)") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        raise PipelineError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
    lines = _line_map(node, str(file)) if node is not None else {}
    raw = {} if raw is None else raw
    for item in overrides:
        if not isinstance(raw, dict):
            break
        apply_override(raw, item, lines)
    return validate(raw, file, lines)


def validate_dict(cfg: dict[str, Any], base: str | Path = ".") -> LoadedPipeline:
    """Validate a pipeline given as a Python dict (paths relative to ``base``)."""
    return validate(cfg, Path(base) / "<dict>", {})
