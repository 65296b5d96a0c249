"""A featpipe bundle as an MLflow pyfunc model: image paths in, labels and probabilities out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from featpipe.errors import ModelError

BUNDLE_ARTIFACT = "bundle"  # the self-contained bundle folder (model.joblib, its .sha256, weights/)


def image_paths(model_input: Any) -> list[str]:
    """The paths of a pyfunc input: a DataFrame (its ``path`` column, or its only column), a Series, a list
    or array of paths, or one path."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            model_input = model_input["path"]
        elif len(model_input.columns) == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise ModelError(f"give image paths in a 'path' column (got columns {list(model_input.columns)[:5]})")
    if isinstance(model_input, (str, Path)):
        return [str(model_input)]
    return [str(p) for p in list(model_input)]


class BundleModel(mlflow.pyfunc.PythonModel):
    """Loads the logged bundle with :func:`featpipe.bundle.io.load_model` (checksum checked) and predicts
    as ``featpipe predict`` does: one row per image, with ``path``, ``label`` (None: unreadable image; a list of
    labels for multi-label), ``error`` and one ``p_<class>`` column per class."""

    def load_context(self, context):
        from featpipe.bundle.io import load_model

        self.model = load_model(Path(context.artifacts[BUNDLE_ARTIFACT]) / "model.joblib")

    def predict(self, context, model_input: list[str], params=None):  # MLflow turns a DataFrame into the list
        import pandas as pd

        from featpipe.heads.model import expand_image_paths

        paths = expand_image_paths(image_paths(model_input))  # a folder stands for its images, as in predict
        proba = self.model.predict_proba(paths)
        errors = dict(self.model.last_errors_)
        out = pd.DataFrame({"path": paths, "label": self.model.labels_from_proba(proba),
                            "error": [errors.get(p) for p in paths]})
        for i, c in enumerate(self.model.classes_):
            out[f"p_{c}"] = proba[:, i]
        return out
