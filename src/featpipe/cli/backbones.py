"""`featpipe backbones`: what can be embedded with, and what works offline here."""

from __future__ import annotations

import click


@click.command()
@click.option("--layers", "layers_of", default=None, metavar="NAME", help="List the cut points of one backbone.")
@click.option("--stages", "stages_of", default=None, metavar="NAME",
              help="List the stages of one backbone (featpipe finetune --unfreeze last-N counts them).")
def backbones(layers_of: str | None, stages_of: str | None) -> None:
    """List registered backbones and mark those usable offline on this machine.

    Any timm model name also works (pretrained weights need the hub, or --weights FILE,
    or --no-pretrained). Any .onnx file works as a feature extractor.

    \b
    Examples:
      featpipe backbones                       # registry, offline column
      featpipe backbones --layers vgg16        # cut points for --layer (block4_pool, features.23, ...)
      featpipe backbones --layers efficientnet_lite0
    """
    from featpipe.backbones import describe_backbones, list_layers, list_stages

    if stages_of:
        for name in list_stages(stages_of):
            click.echo(name)
        return
    if layers_of:
        for name in list_layers(layers_of):
            click.echo(name)
        return
    rows = describe_backbones()
    w = max(len(r["name"]) for r in rows)
    click.echo(f"{'name':<{w}}  offline  source / description")
    for r in rows:
        mark = "yes" if r["offline"] else "no"
        click.echo(f"{r['name']:<{w}}  {mark:<7}  {r['source']}: {r['description']}")
