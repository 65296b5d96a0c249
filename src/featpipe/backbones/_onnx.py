"""ONNX files as frozen feature extractors, run through onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from featpipe.backbones._base import Backbone, BackboneSpec
from featpipe.errors import BackboneError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class OnnxBackbone(Backbone):
    """Runs an ONNX image model; 4-D outputs are average-pooled, others flattened.

    ``preprocessing`` gives size, crop, resize antialiasing, mean/std (applied to 0..1 RGB pixels) and
    the channel order the network receives (``BGR`` flips the channels after normalising).
    """

    def __init__(self, spec: BackboneSpec, preprocessing: dict[str, Any], device: str) -> None:
        self._runner = _make_runner(spec.arch, device)
        shape = self._runner.input_shape
        size = spec.image_size
        if size is None:
            h = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None
            size = h or 224
        preprocessing = dict(preprocessing)
        preprocessing["input_size"] = [3, size, size]
        super().__init__(spec, preprocessing, device)
        crop = preprocessing.get("crop_pct", 1.0)
        resize = int(round(size / crop)) if crop < 1 else size
        self._transform = T.Compose(
            [
                T.PILToTensor(),
                T.Resize(
                    resize if crop < 1 else [size, size],
                    interpolation=T.InterpolationMode(preprocessing.get("interpolation", "bilinear")),
                    antialias=preprocessing.get("antialias", True),
                ),
                T.CenterCrop(size),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(preprocessing["mean"], preprocessing["std"]),
            ]
        )
        self._bgr = preprocessing.get("channel_order", "RGB") == "BGR"
        self.feature_dim = int(self.forward(torch.zeros(1, 3, size, size)).shape[1])

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        x = self._transform(img)
        return x.flip(0) if self._bgr else x

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(batch.float().cpu().numpy())
        out = np.asarray(self._runner(x), dtype=np.float32)
        if out.ndim == 4:
            out = out.mean(axis=(2, 3))
        return out.reshape(out.shape[0], -1)


class _OrtRunner:
    """onnxruntime session; feeds the first graph input."""

    def __init__(self, path: str, device: str) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, list(inp.shape)
        self.fixed_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch == 1 and len(x) > 1:
            return np.concatenate([self(x[i : i + 1]) for i in range(len(x))])
        return self.session.run(None, {self.input_name: x})[0]


class _OpenCvRunner:
    """OpenCV's DNN engine: runs ONNX files that list their weights as graph inputs (e.g. SFace)."""

    def __init__(self, path: str, input_name: str, input_shape: list) -> None:
        import cv2

        self.net = cv2.dnn.readNetFromONNX(path)
        self.input_name, self.input_shape = input_name, input_shape

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.net.setInput(x, self.input_name)
        return self.net.forward()


def _make_runner(path: str, device: str) -> _OrtRunner | _OpenCvRunner:
    """onnxruntime when it can run the file, else OpenCV DNN; one clear error if neither can."""
    try:
        runner = _OrtRunner(path, device)
    except Exception as e:
        raise BackboneError(f"cannot load ONNX model {path}: {str(e).splitlines()[0]}") from e
    shape = [d if isinstance(d, int) else 1 for d in runner.input_shape]
    if len(shape) != 4:
        raise BackboneError(f"ONNX model {path} takes input of shape {runner.input_shape}, not an image batch")
    try:
        runner(np.zeros(shape, dtype=np.float32))
        return runner
    except Exception as ort_error:
        try:
            cv_runner = _OpenCvRunner(path, runner.input_name, runner.input_shape)
            cv_runner(np.zeros(shape, dtype=np.float32))
            return cv_runner
        except Exception:
            msg = str(ort_error).splitlines()[0][:200]
            raise BackboneError(f"cannot run ONNX model {path}: {msg}") from ort_error
