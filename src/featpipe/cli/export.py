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
@click.option("--card", is_flag=True, help="Also write OUT/README.md, a model card (Hugging Face format): task, "
              "classes, data and split, backbone and head, test scores with intervals, thresholds, known limits, "
              "intended use, how to load it; read from the run record beside the bundle.")
@click.option("--push", "push_repo", default=None, metavar="REPO",
              help="Publish OUT (bundle + card) as the Hugging Face Hub model repository REPO (user/name; needs a "
              "token, e.g. HF_TOKEN). Implies --card.")
def export(model_path, out_dir, fmt, self_contained, no_verify, card, push_repo):
    """Export a model bundle for another machine, for untrusted-file policies, or for serving without torch.

    \b
    Examples:
      featpipe export models/run/logistic/model.joblib --self-contained --out shipped/
      featpipe export models/run/logistic/model.joblib --format skops --out shipped/
      featpipe export models/run/mlp/model.joblib --format onnx --out serving/
      featpipe export models/run/lgbm/model.joblib --self-contained --card --out shipped/
      featpipe export models/run/lgbm/model.joblib --self-contained --push me/photo-tagger --out shipped/
    """
    from featpipe.bundle.export import export_model

    written = export_model(model_path, out_dir, fmt, self_contained=self_contained, verify=not no_verify)
    if card or push_repo:
        from featpipe.bundle.card import write_card

        written.append(write_card(model_path, out_dir, bundle_name=written[-1].name))
    for p in written:
        click.echo(f"wrote {p}")
    if push_repo:
        from featpipe.bundle.card import push_folder

        click.echo(f"pushed {out_dir} to {push_folder(out_dir, push_repo)}")
