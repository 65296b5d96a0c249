"""`featpipe convert-weights`: Keras VGG weights (e.g. VGGFace .h5) -> a file `--weights` loads."""

from __future__ import annotations

import click


@click.command("convert-weights")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("--arch", default="vgg16", show_default=True, type=click.Choice(["vgg11", "vgg13", "vgg16", "vgg19"]),
              help="VGG architecture the Keras file holds.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Torch weights file to write.")
@click.option("--trained-with", default="vggface", show_default=True, type=click.Choice(["vggface", "caffe"]),
              help="Preprocessing the weights were trained with, stored in the file and used by --weights: "
              "BGR 0..255 minus VGGFace's mean pixel, or minus the ImageNet mean pixel (Keras' own VGG weights).")
def convert_weights(src: str, arch: str, out: str, trained_with: str) -> None:
    """Convert Keras VGG weights (.h5, read without TensorFlow) for `--weights`.

    Reads keras-vggface files (layers conv1_1..conv5_3, fc6..fc8) and Keras' own layer names
    (block1_conv1.., fc1, fc2, predictions), with or without the fully connected top. Writes a
    torchvision-layout state dict plus the preprocessing (BGR, mean pixel) that `--weights`
    applies and records in the cache key.

    \b
    Examples:
      featpipe convert-weights rcmalli_vggface_tf_vgg16.h5 --arch vgg16 --out vggface.pth
      featpipe embed --data faces/ --backbone vgg16 --weights vggface.pth
    \b
      # convolutions only ("notop" file): cut inside the convolutions
      featpipe convert-weights rcmalli_vggface_tf_notop_vgg16.h5 --out vggface_notop.pth
      featpipe embed --data faces/ --backbone vgg16 --weights vggface_notop.pth --layer block5_pool
    """
    from featpipe.backbones import convert_keras_vgg

    res = convert_keras_vgg(src, out, arch=arch, trained_with=trained_with)
    n = sum(t.numel() for t in res.state_dict.values())
    top = f"with fc6/fc7 ({res.n_classes or 'no'} fc8 classes)" if res.has_top else \
        "convolutions only: embed with --layer block5_pool or earlier"
    click.echo(f"wrote {out}: {arch}, {len(res.state_dict)} tensors, {n / 1e6:.1f}M weights, {top}; "
               f"preprocessing {trained_with} (BGR, mean pixel)")
