"""ShapesBench metrics from pixels alone: colour, shape, motion direction, smoothness, subject consistency.

For each frame the background is the median colour of the border pixels; the object is every pixel far enough from
it. From the object masks: its mean colour (nearest palette colour), its fill ratio inside its bounding box
(circle ~0.79, square ~1.0, triangle ~0.5), its centroid trajectory (direction of the net displacement, jitter =
mean size of the trajectory's second differences) and the stability of its area and colour over time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcm_demo.world import COLOURS, DIRECTIONS, Attributes

# A pixel belongs to the object when its colour is this far (L2, 0-255 scale) from the frame's background.
OBJECT_THRESHOLD = 60.0
# Fill ratio of each shape inside its bounding box (pi/4 for a disc, 1 for a square, 1/2 for a triangle).
FILL_RATIOS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
# Net displacement (pixels) below which a video counts as not moving.
MIN_DISPLACEMENT = 2.0
MIN_OBJECT_PIXELS = 4
# A "mask" covering more than this share of the frame is no object (e.g. noise): the frame counts as empty.
MAX_OBJECT_FRACTION = 0.5


@dataclass(frozen=True, kw_only=True)
class VideoScore:
    """Per-video results; the ``*_ok`` fields are 0/1, the others continuous."""

    colour_ok: float
    shape_ok: float
    direction_ok: float
    jitter: float  # mean |second difference| of the centroid trajectory, pixels (lower is smoother)
    consistency: float  # (1 - relative variation of area and colour across frames) x share of frames with the object
    found_frames: float  # share of frames where an object was found
    predicted: dict


def object_masks(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) bool object masks."""
    x = frames.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (F, 2H + 2W, 3)
    background = np.median(border, axis=1)  # (F, 3)
    distance = np.linalg.norm(x - background[:, None, None, :], axis=-1)
    return distance > OBJECT_THRESHOLD


def score_video(frames: np.ndarray, expected: Attributes) -> VideoScore:
    """Scores one video (F, H, W, 3) uint8 against the attributes its prompt asked for."""
    masks = object_masks(frames)
    areas = masks.reshape(len(masks), -1).sum(1)
    found = (areas >= MIN_OBJECT_PIXELS) & (areas <= MAX_OBJECT_FRACTION * masks[0].size)
    if not found.any():
        return VideoScore(colour_ok=0.0, shape_ok=0.0, direction_ok=0.0, jitter=float("inf"), consistency=0.0,
                          found_frames=0.0, predicted={})  # fmt: skip
    idx = np.flatnonzero(found)
    colours = np.array([frames[t][masks[t]].mean(0) for t in idx])  # (T, 3)
    mean_colour = colours.mean(0)
    palette = {name: np.array(rgb, dtype=np.float32) for name, rgb in COLOURS.items()}
    colour = min(palette, key=lambda name: np.linalg.norm(palette[name] - mean_colour))
    fills = []
    for t in idx:
        ys, xs = np.nonzero(masks[t])
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills.append(masks[t].sum() / box)
    fill = float(np.median(fills))
    shape = min(FILL_RATIOS, key=lambda name: abs(FILL_RATIOS[name] - fill))
    centroids = np.array([np.argwhere(masks[t]).mean(0) for t in idx])  # (T, 2) (y, x)
    displacement = centroids[-1] - centroids[0]
    direction = None
    if np.abs(displacement).max() >= MIN_DISPLACEMENT:
        unit = displacement / np.linalg.norm(displacement)
        direction = max(DIRECTIONS, key=lambda name: float(np.dot(unit, DIRECTIONS[name])))
    jitter = float(np.abs(np.diff(centroids, n=2, axis=0)).sum(1).mean()) if len(centroids) > 2 else 0.0
    areas = areas[idx]
    area_var = areas.std() / max(areas.mean(), 1.0)
    colour_var = colours.std(0).mean() / 255.0
    # Frames where the object vanished count against consistency too.
    consistency = float(np.clip(1.0 - area_var - colour_var, 0.0, 1.0) * found.mean())
    return VideoScore(
        colour_ok=float(colour == expected.colour), shape_ok=float(shape == expected.shape),
        direction_ok=float(direction == expected.direction), jitter=jitter, consistency=consistency,
        found_frames=float(found.mean()),
        predicted={"colour": colour, "shape": shape, "direction": direction, "fill": fill},
    )  # fmt: skip


def pixel_distance(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute pixel difference in [0, 1] between two videos of the same shape."""
    if video.shape != reference.shape:
        raise ValueError(f"videos must have the same shape, got {video.shape} and {reference.shape}")
    return float(np.abs(video.astype(np.float32) - reference.astype(np.float32)).mean() / 255.0)


def summarise(scores: list[VideoScore]) -> dict[str, float]:
    """Accuracies in percent, mean jitter (px) and consistency (percent) over a set of videos."""
    finite = [s.jitter for s in scores if np.isfinite(s.jitter)]
    return {
        "colour_acc": 100 * float(np.mean([s.colour_ok for s in scores])),
        "shape_acc": 100 * float(np.mean([s.shape_ok for s in scores])),
        "direction_acc": 100 * float(np.mean([s.direction_ok for s in scores])),
        "jitter_px": float(np.mean(finite)) if finite else float("inf"),
        "consistency": 100 * float(np.mean([s.consistency for s in scores])),
    }
