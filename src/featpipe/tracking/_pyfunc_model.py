"""The code MLflow runs to load a logged featpipe model ("models from code": no pickled Python object in the
logged model but the featpipe bundle, which featpipe loads with its checksum checked)."""

import mlflow.models

from featpipe.tracking._pyfunc import BundleModel

mlflow.models.set_model(BundleModel())
