"""Image decoding, conversion, resizing, normalisation and the refusals, without HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from elf_core.manifest import Preprocessing
from server.preprocess import InputError, decode_all, decode_image, tensor_input
from tests.server.images import GARBAGE, encode, grey, png_header_only, truncated

GREY = Preprocessing(channels=1, height=28, width=28, mean=[0.5], std=[0.25])
RGB = Preprocessing(channels=3, height=8, width=6, mean=[0.1, 0.2, 0.3], std=[1, 2, 4])


def test_grey_png_is_normalised_nchw() -> None:
    img = grey()
    x = decode_image(encode(img), GREY, 10_000)
    expected = (np.asarray(img, np.float32) / 255 - 0.5) / 0.25
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], expected, rtol=1e-6)


def test_rgb_jpeg_becomes_grey_and_is_resized() -> None:
    img = Image.new("RGB", (56, 40), (200, 100, 50))
    x = decode_image(encode(img, "JPEG"), GREY, 10_000)
    assert x.shape == (1, 28, 28)
    lum = (200 * 299 + 100 * 587 + 50 * 114) / 1000 / 255  # Pillow's L conversion
    np.testing.assert_allclose(x, (lum - 0.5) / 0.25, atol=0.05)


def test_grey_becomes_rgb_with_per_channel_normalisation() -> None:
    img = Image.new("L", (6, 8), 255)
    x = decode_image(encode(img), RGB, 10_000)
    assert x.shape == (3, 8, 6)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.1) / 1, (1 - 0.2) / 2, (1 - 0.3) / 4])


def test_resize_center_crop_keeps_the_centre() -> None:
    pre = GREY.model_copy(update={"resize": "resize_center_crop", "interpolation": "nearest"})
    arr = np.zeros((28, 56), np.uint8)
    arr[:, 14:42] = 255  # a bright centre square, dark sides
    x = decode_image(encode(Image.fromarray(arr, "L")), pre, 10_000)
    assert x.shape == (1, 28, 28)
    np.testing.assert_allclose(x, (1 - 0.5) / 0.25)


def test_exact_policy_refuses_other_sizes() -> None:
    pre = GREY.model_copy(update={"resize": "exact"})
    with pytest.raises(InputError, match="exactly 28x28"):
        decode_image(encode(grey(30)), pre, 10_000)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty image"),
        (GARBAGE, 400, "not a recognised image"),
        (truncated(encode(grey(64))), 400, "truncated or corrupt PNG"),
        (truncated(encode(grey(64).convert("RGB"), "JPEG")), 400, "truncated or corrupt JPEG"),
        (png_header_only(5_000, 5_000), 413, "5000x5000 = 25000000 pixels, above the limit"),
        (png_header_only(50_000, 50_000), 413, "too many pixels"),  # Pillow's own bomb check
        (encode(grey(101)), 413, "101x101 = 10201 pixels"),
    ],
)
def test_bad_images_are_refused_with_the_reason(data: bytes, status: int, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        decode_image(data, GREY, 10_000)
    assert info.value.status == status


def test_decode_all_names_the_bad_image() -> None:
    good = encode(grey())
    with pytest.raises(InputError, match=r"^files\[1\]: not a recognised image"):
        decode_all([("files[0]", good), ("files[1]", GARBAGE), ("files[2]", good)], GREY, 10**4)


def test_tensor_input_accepts_flat_and_nested_data() -> None:
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    flat = tensor_input(x.ravel().tolist(), [2, 1, 28, 28], GREY)
    nested = tensor_input(x.tolist(), [2, 1, 28, 28], GREY)
    for got in (flat, nested):
        assert len(got) == 2
        np.testing.assert_array_equal(np.stack(got), x)


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        ([0.0] * 784, [1, 28, 28], "does not match"),
        ([0.0] * 784, [1, 3, 28, 28], "does not match"),
        ([0.0] * 783, [1, 1, 28, 28], "783 values"),
        ([float("nan")] * 784, [1, 1, 28, 28], "NaN"),
        (["0.5"] * 784, [1, 1, 28, 28], "needs numbers"),
        ([[0.0], [0.0, 1.0]], [1, 1, 28, 28], "not a regular array"),
    ],
)
def test_tensor_input_refuses_bad_tensors(data: object, shape: list[int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        tensor_input(data, shape, GREY)
