"""Synthetic training data from the shapes world: clips of any size, encoded by a pipeline's VAE and text encoder.

Used by ``jobs/distill.py --synthetic-data`` and by tests and benchmarks that need videos or a dataset without
external data.
"""

from __future__ import annotations

import numpy as np
import torch

from dcm.data import DEFAULT_SHARD_SIZE, DatasetWriter
from dcm_demo.world import SIZES, WorldConfig, make_clip

# Share of the frame side an object may travel in one clip (the largest object takes SIZES["large"] of it).
MAX_TRAVEL = 0.9 - max(SIZES.values())
DEFAULT_PIXELS_PER_FRAME = WorldConfig().pixels_per_frame


def world_video(seed: int, *, num_frames: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """A clip of the shapes world at any size: rendered square on the longer side, then centre-cropped.

    Returns:
        frames (F, H, W, 3) uint8 and the clip's caption.
    """
    side = max(height, width)
    speed = min(DEFAULT_PIXELS_PER_FRAME, MAX_TRAVEL * side / max(num_frames - 1, 1))
    clip = make_clip(seed, WorldConfig(size=side, num_frames=num_frames, pixels_per_frame=speed))
    top, left = (side - height) // 2, (side - width) // 2
    return np.ascontiguousarray(clip.frames[:, top : top + height, left : left + width]), clip.caption


@torch.no_grad()
def write_synthetic_dataset(
    pipeline, root: str, *, num_samples: int, num_frames: int, height: int, width: int, seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> dict:  # fmt: skip
    """Encodes ``num_samples`` world clips (seeds ``seed, seed + 1, ...``) with the pipeline's VAE and text encoder."""
    negative = pipeline.encode_prompts([""])
    writer = DatasetWriter(root, family=pipeline.config.family, negative=negative, shard_size=shard_size,
                           source="synthetic shapes world")  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num_samples, shard_size):
        clips = [world_video(seed + i, num_frames=num_frames, height=height, width=width)
                 for i in range(start, min(start + shard_size, num_samples))]  # fmt: skip
        pixels = torch.from_numpy(np.stack([frames for frames, _ in clips])).float() / 255
        captions = [caption for _, caption in clips]
        latents = pipeline.family.encode_video(pipeline.pipe, pixels, generator=generator)
        writer.add(latents, pipeline.encode_prompts(captions), captions, sources=[f"seed {seed + i}" for i in
                   range(start, start + len(clips))])  # fmt: skip
    return writer.close()
