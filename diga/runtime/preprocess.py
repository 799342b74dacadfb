"""Preprocessing shared by INT8 calibration and inference: numpy and Pillow, no torch.

Calibration reads its images through these functions too, so the INT8 ranges are measured on
exactly the tensors the deployed model will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from diga.errors import UserError
from diga.runtime.metadata import ModelInfo


def to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from a PIL image or a uint8 array.

    Accepts (H, W) grayscale, (H, W, 1), (H, W, 3) RGB and (H, W, 4) RGBA arrays and PIL images
    of any mode (converted to RGB).

    Raises:
        UserError: an empty image, or an array that is not a uint8 image.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise UserError(f"{name} is empty ({image.width}x{image.height} pixels)",
                            "give an image with at least one pixel")
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise UserError(f"{name} is a {type(image).__name__}, not an image",
                        "give an RGB uint8 numpy array (H, W, 3) or a PIL image")
    if image.size == 0:
        raise UserError(f"{name} is empty (shape {tuple(image.shape)})",
                        "give an image with at least one pixel")
    if image.dtype != np.uint8:
        raise UserError(f"{name} has dtype {image.dtype}, expected uint8 (0..255)",
                        "convert it, e.g. (img * 255).round().astype(np.uint8) for [0, 1] floats")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise UserError(f"{name} has shape {tuple(image.shape)}, expected (H, W), (H, W, 3) or "
                        "(H, W, 4)", "channels go last (HWC), in RGB order")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]  # RGBA: drop alpha, as PIL's convert("RGB") does
    return np.ascontiguousarray(image)


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 (H, W, 3) image to ``size`` (H, W)."""
    if image.shape[:2] == tuple(size):
        return image
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (H, W) label map (ids must stay ids)."""
    if labels.shape == tuple(size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.Resampling.NEAREST))


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, h, w) float logits to (C, H, W), one float image per class."""
    if logits.shape[1:] == tuple(size):
        return logits
    return np.stack([
        np.asarray(Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
                   .resize((size[1], size[0]), Image.Resampling.BILINEAR))
        for channel in logits
    ])


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W): ``(x / 255 - mean) / std``."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)  # (B, 3, H, W)
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s)


RunSize = str | tuple[int, int]  # "trained", "native" or an explicit (H, W)
TRAINED, NATIVE = "trained", "native"


def check_run_size(info: ModelInfo, size: RunSize, where: str) -> RunSize:
    """Validate a run size for a model: ``trained``, ``native`` or a positive (H, W).

    Raises:
        UserError: an unknown size, or a size other than its own for a static model.
    """
    if isinstance(size, str):
        if size not in (TRAINED, NATIVE):
            raise UserError(f"unknown run size {size!r} for {where}",
                            "use 'trained' (the default), 'native' or an (H, W) pair")
    else:
        size = (int(size[0]), int(size[1]))
        if min(size) <= 0:
            raise UserError(f"run size {size} for {where} is not positive", "give HxW > 0")
    if not info.dynamic and info.input_size is not None and size not in (TRAINED, info.input_size):
        h, w = info.input_size
        raise UserError(f"{where} is a static model: it runs only at {h}x{w}, not at {size}",
                        "drop the size option, or export a dynamic model (without --static)")
    return size


def model_input_size(info: ModelInfo, image_size: tuple[int, int],
                     size: RunSize = TRAINED) -> tuple[int, int]:
    """The (H, W) an image of ``image_size`` is run at: the one rule every path shares.

    A static model runs at its export size. Otherwise ``trained`` (the default) is the size the
    model was trained and evaluated at (``info.inference_size``; the image's own size for a
    model trained on images at their own size, or an older file that records none); ``native``
    is the image's own size; an (H, W) is that size.
    """
    if not info.dynamic and info.input_size is not None:
        return info.input_size
    if size == TRAINED:
        return info.inference_size or tuple(image_size)  # type: ignore[return-value]
    if size == NATIVE:
        return tuple(image_size)  # type: ignore[return-value]
    return tuple(size)  # type: ignore[return-value]


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) times ``scale``, rounded, at least one pixel: a multi-scale test's view size."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def scale_views(image: np.ndarray, base: tuple[int, int],
                scales: Sequence[float]) -> dict[float, np.ndarray]:
    """A multi-scale test's views of an RGB uint8 (H, W, 3) image: each scale of ``base`` (the
    run size), resized from the image itself, so a 2x view keeps the full image's detail."""
    return {s: resize_rgb(image, scaled_size(base, s)) for s in scales}


def to_model_size(image: np.ndarray, info: ModelInfo, size: RunSize = TRAINED) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image resized (bilinear) to the size it runs at."""
    return resize_rgb(image, model_input_size(info, image.shape[:2], size))


def prepare_batch(images: Sequence[np.ndarray], info: ModelInfo) -> np.ndarray:
    """RGB uint8 (H, W, 3) images of one size -> the model's input tensor.

    float models take normalised float32 (B, 3, H, W); uint8 models (preprocessing baked into
    the graph) take the raw pixels in the model's layout.
    """
    batch = np.stack([np.asarray(img, np.uint8) for img in images])  # (B, H, W, 3)
    if info.input_kind == "float":
        return normalize(batch, info.mean, info.std)
    if info.layout == "NCHW":
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(batch)
