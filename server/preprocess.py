"""Images and tensors -> the normalised float32 input of stage 0, or a 4xx error saying why.

Encoded images are decoded with Pillow, limited in pixels before any pixel is decoded (the header
gives the size; decompression bombs stop there), converted to the manifest's channels (L or RGB;
an alpha channel is dropped), resized as the manifest says and normalised on the [0, 1] scale.
Multi-frame files (GIF, TIFF) use their first frame.

Several images in one request: the request is all or nothing. The first bad image fails the whole
request with a 4xx whose message starts with its position (`files[2]: ...`), and nothing of it
is queued; the client resends the others.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, UnidentifiedImageError

from elf_core.manifest import Preprocessing

# Formats a client may send; anything else is refused before Pillow picks a parser for it.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}


class InputError(ValueError):
    """Bad client input: HTTP `status`, metrics `reason`, message naming the problem."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_image") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def decode_image(data: bytes, pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> float32 [C, H, W] normalised as the manifest says."""
    if not data:
        raise InputError("empty image (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InputError(
            f"not a recognised image ({len(data)} bytes; accepted: {', '.join(FORMATS)})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"too many pixels: {exc}", 413, "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"corrupt image header: {exc}") from None
    # Only the header has been read: refuse big images before decoding a single pixel.
    width, height = img.size
    if width * height > max_pixels:
        raise InputError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (ELF_MAX_IMAGE_PIXELS)",
            413,
            "too_many_pixels",
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"truncated or corrupt {img.format} image: {exc}") from None
    return to_input(img, pre)


def to_input(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A decoded Pillow image -> float32 [C, H, W]."""
    mode = "L" if pre.channels == 1 else "RGB"
    if img.mode != mode:  # convert() copies even when the mode already matches
        img = img.convert(mode)
    img = _resize(img, pre)
    pixels = np.asarray(img)  # uint8 [H, W] or [H, W, 3]
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    table = normalise_table(tuple(pre.mean), tuple(pre.std))  # [C, 256]
    if len(table) == 1:
        return table[0].take(chw)  # one gather, C-contiguous [1, H, W]
    # Channel c's pixel v is row c * 256 + v of the flattened table.
    offsets = np.arange(0, 256 * len(table), 256, dtype=np.intp)[:, None, None]
    return table.reshape(-1).take(chw + offsets)


@lru_cache(maxsize=16)
def normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[C, 256] float32: (v / 255 - mean[c]) / std[c] for every uint8 value v.

    The same float32 operations as normalising the image itself, so identical values bit for
    bit, but the per-request work is one gather instead of a divide, subtract and divide.
    """
    v = np.arange(256, dtype=np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    table = np.ascontiguousarray((v[None] - m) / s, dtype=np.float32)
    table.setflags(write=False)
    return table


def _resize(img: Image.Image, pre: Preprocessing) -> Image.Image:
    target = (pre.width, pre.height)
    if img.size == target:
        return img
    if pre.resize == "exact":
        raise InputError(
            f"image is {img.width}x{img.height}; this model needs exactly "
            f"{pre.width}x{pre.height} (resize policy 'exact')"
        )
    resample = _RESAMPLE[pre.interpolation]
    if pre.resize == "resize":
        return img.resize(target, resample)
    # resize_center_crop: scale so the image covers the target, then cut the centre.
    scale = max(pre.width / img.width, pre.height / img.height)
    size = (max(pre.width, round(img.width * scale)), max(pre.height, round(img.height * scale)))
    img = img.resize(size, resample)
    left, top = (size[0] - pre.width) // 2, (size[1] - pre.height) // 2
    return img.crop((left, top, left + pre.width, top + pre.height))


def decode_all(
    images: Sequence[tuple[str, bytes]], pre: Preprocessing, max_pixels: int
) -> list[np.ndarray]:
    """[(name, bytes)] -> [C, H, W] arrays; the first bad image fails all, named by `name`."""
    out = []
    for name, data in images:
        try:
            out.append(decode_image(data, pre, max_pixels))
        except InputError as exc:
            raise InputError(f"{name}: {exc}", exc.status, exc.reason) from None
    return out


def tensor_input(
    data: object, shape: Sequence[int], pre: Preprocessing, name: str = "input"
) -> list[np.ndarray]:
    """A KServe v2 FP32 tensor (flat row-major or nested data) -> N arrays [C, H, W]."""
    want = (pre.channels, pre.height, pre.width)
    if len(shape) != 4 or tuple(shape[1:]) != want or shape[0] < 1:
        raise InputError(
            f"{name}: shape {list(shape)} does not match [N, {want[0]}, {want[1]}, {want[2]}] "
            "(NCHW, N >= 1)",
            reason="bad_tensor",
        )
    try:
        raw = np.asarray(data)
    except (TypeError, ValueError) as exc:  # ragged nesting
        msg = f"{name}: data is not a regular array ({exc})"
        raise InputError(msg, reason="bad_tensor") from None
    if raw.dtype.kind not in "fi":
        raise InputError(
            f"{name}: datatype FP32 needs numbers in data, got {raw.dtype.kind!r} values",
            reason="bad_tensor",
        )
    arr = raw.astype(np.float32)
    if arr.size != int(np.prod(shape)) or arr.ndim not in (1, len(shape)):
        raise InputError(
            f"{name}: data has {arr.size} values in shape {list(arr.shape)}; shape "
            f"{list(shape)} needs {int(np.prod(shape))} (flat row-major or nested)",
            reason="bad_tensor",
        )
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: data contains NaN or infinite values", reason="bad_tensor")
    batch = arr.reshape(shape)
    return [np.ascontiguousarray(batch[i]) for i in range(shape[0])]
