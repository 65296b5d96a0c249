"""Options shared by several commands."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from featpipe.backbones import DEFAULT_BACKBONE
from featpipe.backbones.config import BackboneConfig
from featpipe.data.config import DataConfig
from featpipe.errors import FeaturepipeError
from featpipe.sections import cli_flag, extra
from featpipe.tracking import TRACKERS

# Impossible numbers are refused by click (the option named, exit 2) before any work starts.
POSITIVE = click.IntRange(min=1)  # sizes and counts
NON_NEGATIVE = click.IntRange(min=0)  # seeds, worker counts (0: inline), "0: off" switches
IMAGE_SIZE = click.IntRange(min=8)  # the smallest input a network here takes (as the fine-tune check says)
FRACTION = click.FloatRange(0, 1)  # probabilities and fractions of a size


def _require_tracker(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from featpipe.tracking import require_tracker

    require_tracker(value)  # a missing extra stops the command before any work
    return value


track_option = click.option(
    "--track", type=click.Choice(TRACKERS), default=None, callback=_require_tracker,
    help="Log each run written (one MLflow run per fitted head: params, metrics, artifacts, the model) to "
    "MLFLOW_TRACKING_URI (default: MLflow's own), in experiment MLFLOW_EXPERIMENT_NAME (default: the dataset "
    "name); runs logged before are not logged again. Needs featpipe[track].")


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices are read from ``module:attr`` when first needed, so a
    command's module imports without the heavy one behind its choices (sklearn for the heads)."""

    def __init__(self, source: str, case_sensitive: bool = True) -> None:
        self._source = source
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        import importlib

        module, attr = self._source.split(":")
        return tuple(getattr(importlib.import_module(module), attr))

    @choices.setter
    def choices(self, value: Any) -> None:  # click may assign; the source stays the truth
        pass


# ------------------------------------------------------------------------------ generated options
class CommaSeparated(click.ParamType):
    """A fixed-length tuple typed as ``a,b,c`` (the form these options always took, so old command lines work)."""

    name = "list"

    def __init__(self, kind: type, n: int) -> None:
        self.kind, self.n = kind, n

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(self.kind(x) for x in str(value).split(","))
        except ValueError:
            parts = ()
        if len(parts) != self.n:
            example = ",".join(["0.7", "0.15", "0.15"][: self.n]) if self.kind is float else "1,2,3"[: 2 * self.n - 1]
            self.fail(f"expected {self.n} comma-separated numbers like {example}, got {value!r}", param, ctx)
        return parts


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else annotation), True
    return annotation, False


def _bounds(field: Any) -> dict[str, Any]:
    """click range arguments from a field's ``ge`` / ``gt`` / ``le`` / ``lt``."""
    out: dict[str, Any] = {}
    for m in field.metadata:
        for attr, key, open_ in (("ge", "min", False), ("gt", "min", True), ("le", "max", False), ("lt", "max", True)):
            if getattr(m, attr, None) is not None:
                out[key] = getattr(m, attr)
                if open_:
                    out[f"{key}_open"] = True
    return out


def _help(field: Any) -> str:
    return (field.description or "").replace("`", "")


def field_option(name: str, field: Any, *, decls: tuple[str, ...] = (), hidden: bool = False,
                 dest: str | None = None) -> click.Option:
    """The click option of one config field: ``--name-with-dashes``, its type, default and help from the field
    (Literal -> Choice, with ``none`` for an optional one; int/float bounds -> IntRange/FloatRange; bool -> a
    flag, ``--x/--no-x`` where it defaults to true or may be unset; fixed tuple -> ``a,b,c``)."""
    flag = cli_flag(name, field) or "--" + name.replace("_", "-")
    hints = extra(field)
    inner, optional = _unwrap(field.annotation)
    default = None if field.is_required() or field.default_factory is not None else field.default
    kw: dict[str, Any] = {"help": _help(field), "default": default, "hidden": hidden,
                          "show_default": default is not None and default is not False}
    names = [*(decls or (flag,)), dest or name]
    if hints.get("metavar"):
        kw["metavar"] = hints["metavar"]
    if hints.get("choices"):
        kw["type"] = LazyChoice(hints["choices"])
    elif hints.get("type") == "text":
        pass  # parsed by the section's own validator (a duration, a size)
    elif inner is bool:
        if default is True or optional:
            names[: len(decls or (flag,))] = [f"{d}/--no-{d[2:]}" for d in (decls or (flag,))]
        else:
            kw["is_flag"] = True
    elif typing.get_origin(inner) is typing.Literal:
        values = {str(v): v for v in typing.get_args(inner)}
        if optional and "none" not in values:
            values["none"] = None  # what an unset optional choice was always typed as
        kw["type"] = click.Choice(list(values))
        if default is not None:
            kw["default"] = str(default)
        kw["callback"] = lambda ctx, param, v: values.get(v, v) if v is not None else None
    elif inner in (int, float):
        bounds = _bounds(field)
        rng = click.IntRange if inner is int else click.FloatRange
        kw["type"] = rng(**bounds) if bounds else inner
    elif typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        kw["type"] = CommaSeparated(args[0], len(args))
        if default is not None:
            kw["default"] = ",".join(str(x) for x in default)
    return click.Option(names, **kw)


def config_options(model: Any, *, into: str | None = None, only: tuple[str, ...] | None = None,
                   exclude: tuple[str, ...] = (), short: dict[str, str] | None = None,
                   aliases: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options generated from a config section's fields (one name everywhere: the field's), so the command
    line, pipeline files and the library take the same settings. ``into``: the command receives the validated
    section under that name (only the options given on the command line set its fields), else each field as
    its own argument. ``aliases``: field -> an old flag, still accepted but hidden from ``--help``.
    Fields marked ``{"cli": False}`` are pipeline-only, ``{"flag": ...}`` ones hand-written."""
    short, aliases = short or {}, aliases or {}
    fields = {n: f for n, f in model.model_fields.items()
              if (only is None or n in only) and n not in exclude and cli_flag(n, f) and "flag" not in extra(f)}

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, **kw: Any) -> Any:
            ctx = click.get_current_context()
            for name, old in aliases.items():
                v = kw.pop(f"{name}__alias")
                if v is None:
                    continue
                if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
                    raise click.UsageError(f"{old} is the old name of --{name.replace('_', '-')}: give one of them")
                kw[name] = v
                ctx.set_parameter_source(name, click.core.ParameterSource.COMMANDLINE)
            if into is not None:
                given = {n: kw.pop(n) for n in fields}
                given = {n: v for n, v in given.items()
                         if ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT}
                kw[into] = build_section(model, given)
            return f(*args, **kw)

        for name in reversed(aliases):
            click.option(aliases[name], f"{name}__alias", hidden=True, default=None,
                         type=field_option(name, fields[name]).type,
                         callback=field_option(name, fields[name]).callback)(command)
        if not hasattr(command, "__click_params__"):
            command.__click_params__ = []  # type: ignore[attr-defined]
        for name, field in reversed(fields.items()):
            decls = ("--" + name.replace("_", "-"), short[name]) if name in short else ()
            command.__click_params__.append(field_option(name, field, decls=decls))  # type: ignore[attr-defined]
        return command

    return decorate


def build_section(model: Any, values: dict[str, Any]) -> Any:
    """``model(**values)``; a value it refuses stops the command with one line naming the option (exit 2)."""
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise FeaturepipeError(f"{where}: {msg}" if where else msg) from None


def backbone_options(f: Callable[..., Any] | None = None, *, multiple: bool = False) -> Any:
    """The backbone options (generated from :class:`BackboneConfig`; each field as its own argument, the
    command builds one config per ``--backbone``); ``multiple=True`` makes ``--backbone`` repeatable."""
    if f is None:
        return lambda g: backbone_options(g, multiple=multiple)
    f = config_options(BackboneConfig)(f)
    name = BackboneConfig.model_fields["name"]
    return click.option("--backbone", "-b", multiple=multiple,
                        default=(DEFAULT_BACKBONE,) if multiple else DEFAULT_BACKBONE, show_default=True,
                        help=_help(name) + ("; repeat it to embed with several backbones in one pass over the "
                                            "images, NAME@LAYER for a cut per backbone." if multiple else ""))(f)


def dataset_options(f: Callable[..., Any] | None = None, *, required: bool = True) -> Any:
    """``--data PATH`` and the options of :class:`DataConfig`; the command receives ``data`` (the path) and
    ``data_config``."""
    if f is None:
        return lambda g: dataset_options(g, required=required)
    f = config_options(DataConfig, into="data_config")(f)
    return click.option("--data", "-d", "data", required=required, default=None, type=click.Path(),
                        help=_help(DataConfig.model_fields["path"]).split(" In a pipeline")[0]
                        + ("" if required else " (instead of --cache: its cache is looked up in --cache-dir)"))(f)


def open_dataset(data: str, config: DataConfig, cache_dir: str | None = None):
    """The dataset at ``data`` with the data options of the command line (a Hugging Face dataset's images are
    written under ``cache_dir``)."""
    from featpipe.data.config import open_dataset as _open

    return _open(config, data, cache_dir=cache_dir)
