"""The model a user keeps: loading a saved bundle (checked against its checksum and its run record), exports
(joblib, skops, ONNX) and model cards."""
