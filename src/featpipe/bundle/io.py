"""Loading a saved bundle: its ``.sha256`` sidecar, the run record beside it (a bundle swapped in from
another run is refused), joblib or skops, and where its weights lay when it was fitted."""

from __future__ import annotations

import os
from pathlib import Path

from featpipe.checksum import sha256_file, sidecar, write_sidecar
from featpipe.errors import ModelError, import_optional
from featpipe.heads.model import FeaturepipeModel
from featpipe.runs import RECORD_FILE, RunRecordError, read_record

# Every type a featpipe bundle holds besides what skops trusts by default (numpy, scikit-learn, builtins).
SKOPS_TRUSTED = frozenset({
    "featpipe.heads.model.FeaturepipeModel",
    "featpipe.heads._base.Preprocessor",
    "featpipe.heads._base.ConstantProba",
    "featpipe.heads._logistic.LogisticHead",
    "featpipe.heads._mlp.MLPHead",
    "featpipe.heads._mlp.MLPWeights",
    "featpipe.heads._lgbm.LGBMHead",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.basic.Booster",
    "collections.OrderedDict",
})


# ------------------------------------------------------------------------------------------ skops


def save_skops(model: FeaturepipeModel, path: str | Path) -> Path:
    """Write ``path`` (.skops) and its ``.sha256`` sidecar."""
    sio = import_optional("skops.io", "export", "skops export (--format skops)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(model, path)
    write_sidecar(path)
    return path


def load_skops(path: str | Path) -> FeaturepipeModel:
    """Load a .skops bundle, trusting only the types in :data:`SKOPS_TRUSTED`; any other type stops the load."""
    sio = import_optional("skops.io", "export", "loading a .skops bundle")

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is one line for the user
        raise ModelError(f"cannot read skops file {path}: {str(e).splitlines()[0][:120]}") from None
    refused = sorted(set(untrusted) - SKOPS_TRUSTED)
    if refused:
        raise ModelError(f"{path} holds types featpipe does not trust, refusing to load: {', '.join(refused[:5])}")
    return sio.load(path, trusted=untrusted)



def _recorded_weight_dirs(bundle_dir: Path) -> list[Path]:
    """Where the weights lay when the run beside the bundle was fitted (its run record, a local file),
    so a bundle in its run folder finds a --weights file that lies elsewhere on the same machine."""
    if not (bundle_dir / RECORD_FILE).is_file():
        return []
    try:
        spec = ((read_record(bundle_dir, verify=False).get("cache") or {}).get("backbone")) or {}
    except RunRecordError:
        return []
    parts = spec.get("parts") or [spec]
    paths = [p.get("weights_path") or (p.get("arch") if p.get("kind") == "onnx" else None) for p in parts]
    return [Path(p).parent for p in paths if p and Path(p).is_absolute()]


def load_model(path: str | os.PathLike, verify: bool = True) -> FeaturepipeModel:
    """Load a saved bundle; with ``verify`` the ``.sha256`` sidecar must exist and match.

    ``.skops`` files are loaded with skops' restricted loader (see :func:`load_skops`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if verify:
        side = sidecar(path)
        if not side.is_file():
            raise ModelError(f"checksum file {side.name} is missing next to {path}; pass --no-verify to skip the check")
        want = (side.read_text().split() or [""])[0].lower()
        if want != sha256_file(path):
            raise ModelError(f"checksum mismatch for {path}: the file changed since it was saved (or is corrupt)")
        _check_against_run_record(path)
    if path.suffix == ".skops":
        model = load_skops(path)
    else:
        import joblib

        try:
            model = joblib.load(path)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad model file for the user
            first = str(e).splitlines()[0][:120] if str(e) else ""
            raise ModelError(f"cannot load model {path}: {type(e).__name__}: {first}; if it was written by another "
                             "featpipe version, re-run featpipe fit-head to rebuild it") from None
    if not isinstance(model, FeaturepipeModel):
        raise ModelError(f"{path} does not hold a featpipe model (found {type(model).__name__})")
    model.bundle_dir_ = str(path.resolve().parent)
    model.recorded_weight_dirs_ = [str(d) for d in _recorded_weight_dirs(path.resolve().parent)]
    return model


def _check_against_run_record(path: Path) -> None:
    """A bundle inside a run folder must be the one its run record names (not a file from another run);
    a bundle copied out on its own has no record beside it and is checked by its sidecar alone."""
    if not (path.parent / RECORD_FILE).is_file():
        return
    try:
        listed = (read_record(path.parent, verify=False).get("record") or {}).get("files") or {}
    except RunRecordError:
        return  # a metrics.json that is no run record: nothing to compare with
    want = listed.get(path.name)
    if want is not None and want != sha256_file(path):
        raise ModelError(f"{path} is not the model its run record ({RECORD_FILE} beside it) describes: copied in "
                         "from another run? Re-run the fit, or load it with --no-verify")
