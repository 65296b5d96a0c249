import hashlib
import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from featpipe.data.images import image_from_array, load_image, read_bytes_and_hash
from featpipe.errors import ImageError

from _imgutil import noise


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, format="JPEG", **kw)
    return b.getvalue()


def _reason(source, **kw) -> str:
    with pytest.raises(ImageError) as ei:
        load_image(source, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_plain_rgb_from_path_and_bytes(tmp_path):
    p = tmp_path / "a.png"
    src = noise(12, 8)
    src.save(p)
    for s in (p, str(p), p.read_bytes()):
        img = load_image(s)
        assert img.mode == "RGB" and img.size == (12, 8)
        assert np.array_equal(np.asarray(img), np.asarray(src))


def test_failures_have_short_reasons(tmp_path):
    assert _reason(tmp_path / "nope.jpg") == "file not found"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _reason(empty) == "empty file (0 bytes)"
    assert _reason(b"") == "empty file (0 bytes)"
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not an image\n")
    assert _reason(txt) == "not an image (cannot identify format)"


def test_truncated_jpeg_is_a_failed_row(tmp_path):
    data = _jpeg_bytes(noise(32, 32, seed=3), quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert _reason(p) == "truncated image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_fails(tmp_path):
    b = io.BytesIO()
    noise(32, 32, seed=4).save(b, format="PNG")
    data = b.getvalue()
    assert _reason(data[: len(data) // 2]).startswith(("truncated image", "corrupt image"))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    img = load_image(p)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_rgba_png_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), dtype=np.uint8)
    a[..., 0] = 255  # red
    a[:, :4, 3] = 0  # left half fully transparent
    a[:, 4:, 3] = 255
    p = tmp_path / "rgba.png"
    Image.fromarray(a).save(p)
    out = np.asarray(load_image(p))
    assert out.shape == (8, 8, 3)
    assert (out[:, :4] == 255).all()
    assert (out[:, 4:] == [255, 0, 0]).all()


def test_la_png_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 2), dtype=np.uint8)
    a[:, :4, 1] = 0
    a[:, 4:, 1] = 255  # black, opaque
    p = tmp_path / "la.png"
    Image.frombytes("LA", (8, 8), a.tobytes()).save(p)
    out = np.asarray(load_image(p))
    assert (out[:, :4] == 255).all() and (out[:, 4:] == 0).all()


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (4, 0, 8, 8))
    p = tmp_path / "pal.png"
    img.save(p, transparency=0)
    out = np.asarray(load_image(p))
    assert (out[:, :4] == 255).all()  # transparent index -> white, not blue
    assert (out[:, 4:] == [0, 255, 0]).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    out = np.asarray(load_image(p))
    assert out.shape == (4, 4, 3)
    assert out[0, :, 0].tolist() == [0, 4, 128, 255]


def test_grayscale_and_1bit_to_rgb(tmp_path):
    g = tmp_path / "g.png"
    Image.new("L", (10, 6), 77).save(g)
    out = load_image(g)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)
    bw = tmp_path / "bw.png"
    Image.new("1", (10, 6), 1).save(bw)
    assert load_image(bw).getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (32, 16), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes())
    assert Image.open(p).size == (32, 16)
    assert load_image(p).size == (16, 32)


def test_big_jpeg_with_target_size_uses_draft():
    data = _jpeg_bytes(Image.new("RGB", (8000, 6000), (10, 200, 30)), quality=50)
    img = load_image(data, target_size=224)
    assert img.mode == "RGB"
    assert 224 <= min(img.size) and max(img.size) <= 1000  # decoded at 1/8 scale, not 8000x6000
    assert img.size[0] * 6 == img.size[1] * 8
    r, g, b = img.getpixel((10, 10))
    assert abs(r - 10) < 8 and abs(g - 200) < 8 and abs(b - 30) < 8


def test_max_pixels_refused_with_clear_reason():
    data = _jpeg_bytes(noise(40, 30))
    msg = _reason(data, max_pixels=1000)
    assert msg.startswith("image too large (40x30")


def test_pil_bomb_limit_replaced_by_ours(monkeypatch):
    data = _jpeg_bytes(noise(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL would warn (>100) and refuse (>200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(data).size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100
    assert _reason(data, max_pixels=500).startswith("image too large")


def test_gif_and_bmp(tmp_path):
    for ext, fmt in ((".gif", "GIF"), (".bmp", "BMP")):
        p = tmp_path / f"x{ext}"
        noise(9, 7).save(p, format=fmt)
        out = load_image(p)
        assert out.mode == "RGB" and out.size == (9, 7)


def test_read_bytes_and_hash(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    data, h = read_bytes_and_hash(p)
    assert data == b"abc" and h == hashlib.sha1(b"abc").hexdigest()
    with pytest.raises(ImageError, match="file not found"):
        read_bytes_and_hash(tmp_path / "missing")


def test_image_from_array():
    g = image_from_array(np.full((5, 7), 9, dtype=np.uint8))
    assert g.mode == "RGB" and g.size == (7, 5) and g.getpixel((0, 0)) == (9, 9, 9)
    assert image_from_array(np.full((5, 7, 1), 9, dtype=np.uint8)).getpixel((1, 1)) == (9, 9, 9)
    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(image_from_array(rgb)), rgb)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert np.asarray(image_from_array(rgba)).min() == 255  # transparent -> white
    with pytest.raises(ImageError, match="shape"):
        image_from_array(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ImageError, match="dtype"):
        image_from_array(np.zeros((4, 4), dtype=np.int32))
