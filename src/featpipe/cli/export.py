"""`featpipe export`: a model bundle as a self-contained joblib folder, a skops file or one ONNX graph."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--format", "fmt", type=click.Choice(["joblib", "skops", "onnx"]), default="joblib", show_default=True,
              help="joblib: the bundle itself (a pickle); skops: loaded with an allow-list of types; "
                   "onnx: backbone + head + thresholds as one graph for onnxruntime.")
@click.option("--self-contained", is_flag=True,
              help="Copy the backbone's weights file into OUT/weights/ (joblib and skops).")
@click.option("--no-verify", is_flag=True, help="Skip the .sha256 checksum check of the model file.")
def export(model_path, out_dir, fmt, self_contained, no_verify):
    """Export a model bundle for another machine, for untrusted-file policies, or for serving without torch.

    \b
    Examples:
      featpipe export models/run/logistic/model.joblib --self-contained --out shipped/
      featpipe export models/run/logistic/model.joblib --format skops --out shipped/
      featpipe export models/run/mlp/model.joblib --format onnx --out serving/
    """
    from featpipe.export import export_model

    for p in export_model(model_path, out_dir, fmt, self_contained=self_contained, verify=not no_verify):
        click.echo(f"wrote {p}")
