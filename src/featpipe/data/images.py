"""Decoding one image robustly into an 8-bit RGB :class:`PIL.Image.Image`.

Every failure is an :class:`~featpipe.errors.ImageError` with a short reason (recorded as a failed
row by the embedder, never fatal for a run). Nothing here changes PIL's global settings: a truncated
file stays a failed row (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featpipe.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS", "failure_reason", "load_image", "read_source", "read_bytes_and_hash", "image_from_array", "DEFAULT_MAX_PIXELS",
    "plain_jpeg_size",
]

# file suffixes treated as images, everywhere (dataset scans, predict folders)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

DEFAULT_MAX_PIXELS = 200_000_000
_WHITE = (255, 255, 255)
_BOMB_LOCK = threading.Lock()


def read_bytes_and_hash(path: str | Path) -> tuple[bytes, str]:
    """Read a file whole; return ``(data, sha1 hex digest)``. Raises :class:`ImageError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror or e})") from None
    return data, hashlib.sha1(data).hexdigest()


def _open(fp) -> Image.Image:
    """``Image.open`` that applies *our* pixel limit instead of PIL's bomb warning/error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError:
        pass
    # PIL refused (> 2 * Image.MAX_IMAGE_PIXELS) before telling us the size: re-open with its check off,
    # briefly and under a lock, then apply max_pixels ourselves (the caller checks the size).
    fp.seek(0)
    with _BOMB_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _as_size(target_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if target_size is None:
        return None
    if isinstance(target_size, int):
        return (target_size, target_size)
    w, h = target_size
    return (int(w), int(h))


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float grayscale -> 8-bit ``L``, scaled (never clipped)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.float64) / 257.0).round()
    elif img.mode == "I":
        arr = arr.astype(np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        lo = float(arr.min()) if arr.size else 0.0
        if lo >= 0 and hi <= 255:
            out = arr
        elif lo >= 0 and hi <= 65535:  # 16-bit data (PNG / TIFF opened as "I")
            out = (arr / 257.0).round()
        else:
            out = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    else:  # "F"
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1.0:
            out = arr * 255.0
        elif lo >= 0 and hi <= 255:
            out = arr
        else:
            out = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        if mode == "RGBa":
            img = img.convert("RGBA")
        elif mode == "La":
            img = img.convert("LA")
        return _composite_on_white(img)
    if mode == "1":
        return img.convert("L").convert("RGB")
    try:
        return img.convert("RGB")  # L, P, CMYK, YCbCr, ...
    except (ValueError, OSError):
        raise ImageError(f"unsupported color mode {mode}") from None


def load_image(
    source: str | Path | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int | tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an 8-bit RGB image.

    EXIF orientation is applied; CMYK, grayscale, 1-bit, palette and 16-bit images become RGB (16-bit is
    scaled, not clipped); transparency is composited onto white. With ``target_size`` ((w, h) or an int)
    a big JPEG is decoded at a reduced scale (``draft``), still at least that large. Images with more
    than ``max_pixels`` pixels are refused. Raises :class:`ImageError` with a short reason.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        p = Path(os.fspath(source))
        if not p.exists():
            raise ImageError("file not found")
        data, _ = read_bytes_and_hash(p)
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")

    fp = io.BytesIO(data)
    try:
        img = _open(fp)
    except UnidentifiedImageError:
        raise ImageError("not an image (cannot identify format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        raise ImageError(f"corrupt image header ({_short(e)})") from None

    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"image too large ({w}x{h} = {w * h:,} pixels > max_pixels {max_pixels:,})")

    size = _as_size(target_size)
    if size is not None and img.format == "JPEG":
        # Orientation may swap the axes later: ask for the larger side in both directions.
        side = max(size)
        img.draft("RGB", (side, side))

    try:
        img.load()
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageError("truncated image") from None
        raise ImageError(f"corrupt image ({_short(e)})") from None
    except (SyntaxError, ValueError, EOFError, zlib.error, IndexError) as e:
        raise ImageError(f"corrupt image ({_short(e)})") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image too large ({w}x{h} pixels)") from None

    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail an otherwise fine image
        pass
    return _to_rgb(img)


def plain_jpeg_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG that a libjpeg-style decoder (torchvision's ``decode_jpeg``,
    nvJPEG) turns into the RGB image :func:`load_image` gives without further steps: complete (ends
    with its EOI marker), sequential, 8-bit YCbCr or grayscale, no Adobe colour transform, no EXIF
    rotation, within ``max_pixels``. None for anything else (:func:`load_image` decides those).
    Reads the header only."""
    if data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return None
    try:
        img = _open(io.BytesIO(data))
        if (img.format != "JPEG" or img.mode not in ("RGB", "L") or img.info.get("progressive")
                or "adobe" in img.info):
            return None
        w, h = img.size
        if w <= 0 or h <= 0 or w * h > max_pixels:
            return None
        if "exif" in img.info and img.getexif().get(0x0112, 1) not in (None, 1):  # Orientation
            return None
    except Exception:  # noqa: BLE001 - anything odd in the header: load_image gives the verdict
        return None
    return w, h


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:120]


def image_from_array(arr: np.ndarray) -> Image.Image:
    """A ``(H, W)`` or ``(H, W, 1|3|4)`` array as an RGB image (RGBA composited onto white).

    ``uint8`` is taken as is; ``bool`` maps to 0/255, ``uint16`` is scaled by 1/257 and floats in
    ``[0, 1]`` by 255. Raises :class:`ImageError` for other shapes or dtypes.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(f"array of shape {a.shape} is not an image (expected HxW or HxWx1/3/4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"empty image array of shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif a.dtype.kind == "f" and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1.0:
        a = (a * 255.0).round().astype(np.uint8)
    else:
        raise ImageError(f"unsupported image array dtype {a.dtype} (expected uint8)")
    a = np.ascontiguousarray(a)
    if a.ndim == 2:
        return Image.fromarray(a).convert("RGB")
    if a.shape[2] == 4:
        return _composite_on_white(Image.fromarray(a))
    return Image.fromarray(a)


def failure_reason(e: Exception) -> str:
    """The reason recorded for a row that could not be decoded: an ImageError's own line, else the
    exception's type and first line (a decoder bug on one image must not end a long run)."""
    if isinstance(e, ImageError):
        return str(e)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:190]


def read_source(path: str, array: np.ndarray | None) -> tuple[bytes | np.ndarray, str, int, int]:
    """Raw content of one image, its sha1, size and mtime (arrays: the row itself)."""
    if array is not None and "#" in path:
        idx = int(path.rsplit("#", 1)[1])
        arr = np.ascontiguousarray(array[idx])
        return arr, hashlib.sha1(arr.tobytes()).hexdigest(), arr.nbytes, 0
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror})") from None
    return data, hashlib.sha1(data).hexdigest(), st.st_size, st.st_mtime_ns
