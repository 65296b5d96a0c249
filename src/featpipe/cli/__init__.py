"""The `featpipe` command: a thin click layer over the library modules."""

from __future__ import annotations

import errno
import os
import sys

import click

from featpipe.errors import FeaturepipeError
from featpipe.versions import FEATPIPE_VERSION as __version__


def _denied(e: OSError) -> bool:
    """A file the process may not write (permissions, a read-only disk): the user's to fix, not a bug."""
    return isinstance(e, PermissionError) or e.errno == errno.EROFS


class _Group(click.Group):
    """Prints featpipe's known errors as one line (exit 2); tracebacks only with --debug."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        debug = ctx.obj and ctx.obj.get("debug") or os.environ.get("FEATPIPE_DEBUG")
        try:
            return super().invoke(ctx)
        except FeaturepipeError as e:
            if debug:
                raise
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)
        except OSError as e:  # the folders featpipe writes are checked up front; this catches any other file
            if debug or not _denied(e):
                raise
            click.secho(f"error: cannot write {e.filename or 'a file'}: {e.strerror}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; the cache keeps every finished row - run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="featpipe")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """featpipe: embed images once with a frozen backbone, fit and tune heads on the cached
    features, compare every backbone x head in one report.

    \b
    Typical session:
      featpipe embed --data photos/ --backbone efficientnet_lite0
      featpipe fit-head --cache cache/photos__efficientnet_lite0__*.h5 --head all --out models/
      featpipe report --models models/ --out report/
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # imported directly: a broken install must fail loudly, not make commands vanish
    from featpipe.cli.backbones import backbones
    from featpipe.cli.cache import cache
    from featpipe.cli.convert_weights import convert_weights
    from featpipe.cli.demo import demo
    from featpipe.cli.embed import embed
    from featpipe.cli.export import export
    from featpipe.cli.finetune import finetune
    from featpipe.cli.fit_head import fit_head
    from featpipe.cli.predict import predict
    from featpipe.cli.report import report
    from featpipe.cli.run import run

    for cmd in (embed, backbones, cache, fit_head, predict, report, run, demo, convert_weights, finetune):
        main.add_command(cmd)
    main.add_command(export)


_register()
