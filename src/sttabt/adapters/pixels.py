"""The one check every image adapter makes on a batch before any work: pixel_values of the right shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sttabt.errors import SttabtError


def checked_pixels(
    batch: Mapping[str, torch.Tensor], channels: int, size: Sequence[int] | None, dtype: torch.dtype
) -> torch.Tensor:
    """``batch["pixel_values"]`` as ``(B, channels, H, W)`` in the model's ``dtype``, refused in one line
    unless it has that layout (and the model's image ``size`` (H, W), when the model has a fixed one)."""
    pixels = batch.get("pixel_values") if isinstance(batch, Mapping) else None
    if pixels is None:
        raise SttabtError("a vision batch needs pixel_values")
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != channels:
        got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise SttabtError(f"pixel_values must be (batch, {channels}, height, width), got {got}")
    if size is not None and tuple(pixels.shape[2:]) != tuple(size):
        height, width = pixels.shape[2:]
        raise SttabtError(f"pixel_values are {height}x{width} but the model takes {size[0]}x{size[1]} images")
    return pixels.to(dtype)
