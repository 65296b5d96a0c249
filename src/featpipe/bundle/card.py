"""Model cards: what a bundle is, how well it does, where it may fail and how to load it, in Hugging
Face's model-card format (YAML metadata + Markdown, through ``huggingface_hub.ModelCard``), written
beside an exported bundle; and publishing that folder to the Hugging Face Hub.

The card is read off the run record beside the bundle (scores with intervals, data and split, seeds,
versions); a bundle without its record gets a card from the bundle alone that says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from featpipe.errors import ModelError
from featpipe.heads.metrics import small_sample
from featpipe.runs import RECORD_FILE, RunRecordError, read_record

CARD_FILE = "README.md"  # the name the Hugging Face Hub shows as a repository's card


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


def _record_beside(model_path: Path) -> dict[str, Any] | None:
    if not (model_path.parent / RECORD_FILE).is_file():
        return None
    try:
        return read_record(model_path.parent)
    except RunRecordError as e:
        raise ModelError(f"cannot write a card: {e}") from None


def card_text(model: Any, record: dict[str, Any] | None, bundle_name: str = "model.joblib") -> str:
    """The card of a loaded bundle (a :class:`featpipe.heads.model.FeaturepipeModel`) and its run record."""
    from huggingface_hub import ModelCard, ModelCardData

    spec = model.backbone_spec or {}
    backbone = spec.get("name", "features only")
    metric = model.metric or (record or {}).get("metric")
    classes = [str(c) for c in model.classes_]
    data = ((record or {}).get("cache") or {}).get("dataset") or {}
    test = ((record or {}).get("scores") or {}).get("test") or None
    meta = ModelCardData(
        library_name="featpipe", pipeline_tag="image-classification", license="other",
        tags=["featpipe", "image-classification", "transfer-learning", model.task_, f"backbone:{backbone}"],
        metrics=[metric] if metric else None,
    )
    lines = [f"# {(record or {}).get('run', 'featpipe model')} / {(record or {}).get('head', model.head_name)}", ""]
    lines += [f"A featpipe model: a frozen **{backbone}** backbone embeds each image, a **{model.head_name}** head "
              f"classifies the features ({model.task_}, {len(classes)} "
              f"{'labels' if model.task_ == 'multilabel' else 'classes'}).", ""]
    lines += ["## Classes", "", ", ".join(f"`{c}`" for c in classes), ""]
    lines += ["## Data", ""]
    if data:
        counts = ", ".join(f"{k} {v}" for k, v in (data.get("split_counts") or {}).items())
        lines += [f"- dataset `{data.get('name')}`: {data.get('n_images')} images ({counts})",
                  f"- split: seed {data.get('split_seed')}, fractions {data.get('split_fractions')}"
                  + (f"; {data.get('split_repairs')} image(s) moved so every class is in every split"
                     if data.get("split_repairs") else "")]
    else:
        lines += ["- not recorded (the bundle was exported without its run record)"]
    lines += ["", "## Backbone and head", ""]
    pre = getattr(model, "preprocessing_", None) or {}
    weights = getattr(model, "weights_", None) or {}
    lines += [f"- backbone: `{backbone}` (weights {weights.get('source', spec.get('weights', '-'))}"
              f"{', ' + weights['package'] if weights.get('package') else ''}"
              f"{', sha256 ' + weights['sha256'][:16] if weights.get('sha256') else ''})",
              f"- preprocessing: input {pre.get('input_size', '-')}, {pre.get('interpolation', '-')} resize, "
              f"crop {pre.get('crop_pct', '-')}, mean {pre.get('mean', '-')}, std {pre.get('std', '-')}",
              f"- head: {model.head_name}, chosen {model.params_} by {model.selection_.get('by', '-')} on "
              f"`{metric}`; final fit on {getattr(model.head_, 'refit_', model.refit)}"]
    if model.thresholds_ is not None:
        th = model.thresholds_
        shown = _fmt(float(th)) if model.task_ == "binary" else ", ".join(
            f"{c} {_fmt(float(t), 2)}" for c, t in zip(classes, th, strict=True))
        lines.append(f"- decision thresholds ({(model.threshold_ or {}).get('tuned_on', 'tuned')}): {shown}")
    lines += ["", "## Scores", ""]
    if test:
        ci = test.get("main_ci")
        lines.append(f"- test {metric}: **{_fmt(test.get('main'))}**"
                     + (f" (95% bootstrap interval {_fmt(ci[0])}-{_fmt(ci[1])}, {test.get('n')} images)" if ci else ""))
        val = ((record or {}).get("scores") or {}).get("val") or {}
        lines.append(f"- validation {metric}: {_fmt(val.get('main'))} (a selection score: optimistic)")
        per = test.get("per_class") or {}
        if per:
            lines += ["", "| class | precision | recall | f1 | test support |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {c} | {_fmt(v.get('precision'))} | {_fmt(v.get('recall'))} | {_fmt(v.get('f1'))} | "
                      f"{v.get('support', '-')} |" for c, v in per.items()]
    else:
        lines.append("- no test scores recorded")
    lines += ["", "## Known limits", ""]
    limits = []
    warn = small_sample(test, model.task_) if test else None
    if warn:
        limits.append(f"Small test set: {warn}; the scores above are not reliable.")
    per = (test or {}).get("per_class") or {}
    if per:
        weakest = sorted(per.items(), key=lambda kv: (kv[1].get("f1") if kv[1].get("f1") is not None else 1.0))[:3]
        limits.append("Weakest classes on test (f1): " + ", ".join(f"`{c}` {_fmt(v.get('f1'))}" for c, v in weakest))
        smallest = sorted(per.items(), key=lambda kv: kv[1].get("support") or 0)[:3]
        limits.append("Fewest test images: " + ", ".join(f"`{c}` {v.get('support')}" for c, v in smallest))
    limits.append("Scores hold for images like the training data (same source, framing and label definitions); "
                  "other images need their own evaluation.")
    lines += [f"- {x}" for x in limits]
    lines += ["", "## Intended use", "",
              f"Labelling images of the kind it was trained on with one of its {len(classes)} "
              f"{'labels' if model.task_ == 'multilabel' else 'classes'}; not for decisions about people "
              "without a human in the loop and an evaluation on the population concerned.", ""]
    lines += ["## How to use", "", "```python", "import featpipe.heads.model as fm", "",
              f'model = fm.load_model("{bundle_name}")  # checks its .sha256 sidecar first',
              'print(model.predict(["photo1.jpg", "photo2.jpg"]))', "```", "",
              f"`featpipe predict --model {bundle_name} photos/` does the same from a shell. The bundle is a "
              "pickle: load it only from a source you trust (or export it with `--format skops`).", ""]
    versions = ", ".join(f"{k} {v}" for k, v in sorted((model.versions_ or {}).items()))
    lines += ["## Reproducibility", "",
              f"- seed {model.seed}; train fingerprint {model.train_fingerprint or '-'}; "
              f"{'run record schema ' + str(record['record']['schema']) if record and record.get('record') else 'no run record'}",
              f"- versions: {versions}", ""]
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_card(model_path: str | os.PathLike, out_dir: str | os.PathLike, bundle_name: str | None = None) -> Path:
    """Write ``out_dir/README.md``, the card of the bundle at ``model_path`` (read with its run record)."""
    from featpipe.bundle.io import load_model

    model_path = Path(model_path)
    model = load_model(model_path, verify=False)
    out = Path(out_dir) / CARD_FILE
    out.write_text(card_text(model, _record_beside(model_path), bundle_name or model_path.name), encoding="utf-8")
    return out


def push_folder(folder: str | os.PathLike, repo: str) -> str:
    """Publish an exported folder (bundle + card) as the Hugging Face Hub model repository ``repo``.

    Real upload code for online users; offline it stops at once with one line (nothing half-sent)."""
    from featpipe.backbones import reachable

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FEATPIPE_OFFLINE") == "1":
        raise ModelError(f"cannot push to {repo}: offline mode is set (HF_HUB_OFFLINE / FEATPIPE_OFFLINE)")
    if not reachable("huggingface.co"):
        raise ModelError(f"cannot push to {repo}: huggingface.co cannot be reached from this machine")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="featpipe export")
    except (HfHubHTTPError, OSError, ValueError) as e:  # no token, no rights, network: one line
        raise ModelError(f"cannot push to {repo}: {str(e).splitlines()[0][:200]}") from None
    return str(getattr(info, "commit_url", repo))
