"""Every PIL image mode becomes the right 8-bit RGB (``diffalign.data.images.to_rgb``, the rules in that
module's docstring): 16-bit scaled, alpha composited on white, out-of-range values refused by name. The
scorers read images with the same decoder and converter."""

import io

import numpy as np
import pytest
from PIL import Image

from diffalign.data import DataError
from diffalign.data.images import decode_image, to_rgb

WHERE = "data.jsonl: line 1, field 'chosen'"


def saved(image: Image.Image, fmt: str) -> bytes:
    """``image`` written as ``fmt`` (decode_image then reads it back as a user's file would be)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def row_pixels(value, mode=None) -> list[tuple[int, int, int]]:
    image = decode_image(value, WHERE)
    assert image.mode == "RGB"
    if mode is not None:
        assert Image.open(io.BytesIO(value)).mode == mode if isinstance(value, bytes) else value.mode == mode
    return [image.getpixel((x, 0)) for x in range(image.width)]


def grey(*levels):
    return [(level, level, level) for level in levels]


def sixteen_bit(mode: str, values=(0, 32768, 65535)) -> Image.Image:
    array = np.array([values], dtype="<u2" if mode in ("I;16", "I;16L") else ">u2")
    return Image.frombytes(mode, (len(values), 1), array.tobytes())


def test_rgb_is_unchanged():
    image = Image.fromarray(np.array([[[10, 20, 30], [200, 100, 50]]], dtype=np.uint8))
    assert row_pixels(saved(image, "PNG"), "RGB") == [(10, 20, 30), (200, 100, 50)]
    assert to_rgb(image) is image


def test_mode_1_is_black_and_white():
    image = Image.frombytes("1", (4, 1), bytes([0b10100000]))
    assert row_pixels(saved(image, "PNG"), "1") == grey(255, 0, 255, 0)


def test_mode_l_is_replicated_to_three_channels():
    image = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8))
    assert row_pixels(saved(image, "PNG"), "L") == grey(0, 128, 255)


def test_mode_la_composites_on_white():
    image = Image.fromarray(np.array([[[0, 0], [0, 255], [0, 128], [200, 255]]], dtype=np.uint8), "LA")
    assert row_pixels(saved(image, "PNG"), "LA") == grey(255, 0, 127, 200)


def palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    return image


def test_mode_p_without_transparency():
    assert row_pixels(saved(palette_image(), "PNG"), "P") == [(255, 0, 0), (0, 0, 255)]


def test_mode_p_with_a_transparent_index_is_white_there():
    image = palette_image()
    image.info["transparency"] = 1
    assert row_pixels(saved(image, "PNG"), "P") == [(255, 0, 0), (255, 255, 255)]
    image = palette_image()  # a per-entry alpha table (PNG tRNS with several entries)
    image.info["transparency"] = bytes([255, 0])
    assert row_pixels(saved(image, "PNG"), "P") == [(255, 0, 0), (255, 255, 255)]


def test_mode_rgba_composites_on_white_never_black():
    pixels = [[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128], [0, 0, 0, 0]]]
    image = Image.fromarray(np.array(pixels, dtype=np.uint8), "RGBA")
    assert row_pixels(saved(image, "PNG"), "RGBA") == [(255, 255, 255), (10, 20, 30), (127, 127, 127), (255, 255, 255)]


def test_rgb_and_l_with_a_transparency_key_composite_on_white():
    image = Image.new("RGB", (2, 1), (1, 2, 3))
    image.putpixel((1, 0), (9, 9, 9))
    image.info["transparency"] = (1, 2, 3)
    assert row_pixels(saved(image, "PNG"), "RGB") == [(255, 255, 255), (9, 9, 9)]
    image = Image.fromarray(np.array([[5, 7]], dtype=np.uint8))
    image.info["transparency"] = 5
    assert row_pixels(saved(image, "PNG"), "L") == [(255, 255, 255), (7, 7, 7)]


def test_mode_cmyk():
    image = Image.new("CMYK", (2, 1), (0, 255, 255, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))
    assert row_pixels(saved(image, "TIFF"), "CMYK") == [(255, 0, 0), (0, 0, 0)]


def test_mode_ycbcr():
    image = Image.fromarray(np.array([[[200, 100, 50], [0, 0, 0]]], dtype=np.uint8)).convert("YCbCr")
    converted = row_pixels(image, "YCbCr")
    assert np.abs(np.array(converted) - [(200, 100, 50), (0, 0, 0)]).max() <= 2  # YCbCr rounding


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_is_scaled_not_clipped(mode):
    image = sixteen_bit(mode)
    assert row_pixels(image, mode) == grey(0, 128, 255)
    assert row_pixels(saved(image, "TIFF"), mode) == grey(0, 128, 255)  # TIFF keeps the byte order


def test_sixteen_bit_png_was_99_percent_white():
    """The reported bug: a 16-bit grey PNG of mid-grey levels read as (almost) all white."""
    levels = np.linspace(0, 65535, 64 * 64).round().astype("<u2").reshape(64, 64)
    data = saved(Image.frombytes("I;16", (64, 64), levels.tobytes()), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = np.asarray(decode_image(data, WHERE))
    expected = np.floor(levels.astype(np.float64) * 255 / 65535 + 0.5)
    assert np.array_equal(decoded[..., 0], expected) and (decoded == 255).mean() < 0.01


def test_mode_i_is_read_on_the_sixteen_bit_scale():
    image = Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.int32))
    assert row_pixels(image, "I") == grey(0, 1, 128, 255)
    assert row_pixels(saved(image, "PPM"), "I") == grey(0, 1, 128, 255)  # a 16-bit PGM opens as I


def test_mode_f_in_unit_range_and_in_byte_range():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert row_pixels(saved(unit, "TIFF"), "F") == grey(0, 128, 255)
    levels = Image.fromarray(np.array([[0.0, 127.5, 255.0]], dtype=np.float32))
    assert row_pixels(levels, "F") == grey(0, 128, 255)


@pytest.mark.parametrize("array, message", [
    (np.array([[0.0, 300.0]], dtype=np.float32), r"image mode F with values from 0 to 300: .*scale \[0, 1\] or \[0, 255\]"),
    (np.array([[np.nan, 1.0]], dtype=np.float32), "image mode F with NaN or infinite values"),
    (np.array([[-1, 70000]], dtype=np.int32), r"image mode I with values from -1 to 70000: .*0\.\.65535 \(16-bit\)"),
])
def test_out_of_range_values_are_refused_by_name(array, message):
    with pytest.raises(DataError, match=f"^{WHERE}: {message}.*convert the image to 8-bit RGB first"):
        decode_image(Image.fromarray(array), WHERE)


def test_the_scorers_use_the_same_decoder_and_converter(tmp_path):
    from diffalign.rewards import hpsv2, http_judge, pickscore, transformers_judge
    from diffalign.rewards.records import ImageRecord
    from diffalign.rewards.scoring import Skipped, load_images

    assert all(module.to_rgb is to_rgb for module in (hpsv2, http_judge, pickscore, transformers_judge))

    def load(path):
        return load_images([ImageRecord(str(path), "p", path.name)], skip_invalid=False, skipped=Skipped())[0]

    path = tmp_path / "grey16.png"
    sixteen_bit("I;16").save(path)
    assert [load(path).getpixel((x, 0)) for x in range(3)] == grey(0, 128, 255)
    transparent = tmp_path / "clear.png"
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(transparent)
    assert load(transparent).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(DataError, match="^bad.tiff: image mode I with values"):
        bad = tmp_path / "bad.tiff"
        Image.fromarray(np.array([[-5, 3]], dtype=np.int32)).save(bad)
        load(bad)
