"""Turning a decoded video into a training clip: temporal sampling, aspect check, resize and center crop.

Pure numpy/torch; decoding lives in :mod:`dcm.io.video` and the Ray job in ``jobs/preprocess.py``.
A rejected video raises :class:`ClipRejected` with a reason the job writes into its rejects table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class ClipRejected(ValueError):
    """The video cannot give a clip; ``reason`` is a short machine-readable key, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """Target clip geometry.

    Args:
        num_frames: frames per clip (``4n + 1`` for Wan / HunyuanVideo VAEs).
        height / width: output size after resize and center crop.
        fps: target frame rate; source frames are picked at this rate (nearest frame).
        max_aspect_distortion: reject videos whose aspect ratio differs from ``width / height`` by more than this
            factor (1.5 = a 16:9 source may be cropped to 4:3 but not to 9:16); center cropping discards the rest.
        start_seconds: where in the video the clip starts.
    """

    num_frames: int
    height: int
    width: int
    fps: float
    max_aspect_distortion: float = 1.5
    start_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_aspect_distortion < 1:
            raise ValueError(f"max_aspect_distortion must be >= 1, got {self.max_aspect_distortion}")
        if self.start_seconds < 0:
            raise ValueError(f"start_seconds must be >= 0, got {self.start_seconds}")


def sample_frame_indices(num_source_frames: int, source_fps: float, config: ClipConfig) -> np.ndarray:
    """Indices of the source frames nearest to ``start + i / fps``, i < num_frames.

    Raises:
        ClipRejected("too_short"): the video ends before the clip does.
    """
    if source_fps <= 0:
        raise ClipRejected("bad_fps", f"source fps must be > 0, got {source_fps}")
    times = config.start_seconds + np.arange(config.num_frames) / config.fps
    indices = np.round(times * source_fps).astype(np.int64)
    if indices[-1] >= num_source_frames:
        duration = num_source_frames / source_fps
        needed = config.start_seconds + (config.num_frames - 1) / config.fps
        raise ClipRejected(
            "too_short",
            f"video lasts {duration:.2f} s ({num_source_frames} frames at {source_fps:g} fps); "
            f"{config.num_frames} frames at {config.fps:g} fps need {needed:.2f} s",
        )
    return indices


def check_aspect(height: int, width: int, config: ClipConfig) -> None:
    """Raises ClipRejected("aspect") when center cropping would throw away too much of the picture."""
    source, target = width / height, config.width / config.height
    distortion = max(source / target, target / source)
    if distortion > config.max_aspect_distortion:
        raise ClipRejected(
            "aspect",
            f"aspect ratio {width}x{height} is too far from the target {config.width}x{config.height} "
            f"(factor {distortion:.2f} > {config.max_aspect_distortion})",
        )


def resize_center_crop(frames: np.ndarray, config: ClipConfig) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, height, width, 3) uint8: scale to cover the target, then crop the center."""
    _, h, w, _ = frames.shape
    check_aspect(h, w, config)
    scale = max(config.height / h, config.width / w)
    new_h, new_w = max(config.height, round(h * scale)), max(config.width, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (F, 3, H, W)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - config.height) // 2, (new_w - config.width) // 2
    x = x[:, :, top : top + config.height, left : left + config.width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_clip(frames: np.ndarray, source_fps: float, config: ClipConfig) -> np.ndarray:
    """A decoded video (F, H, W, 3) uint8 -> the training clip (num_frames, height, width, 3) uint8."""
    indices = sample_frame_indices(frames.shape[0], source_fps, config)
    return resize_center_crop(frames[indices], config)
