"""ShapesBench metrics from pixels alone: colour, shape, direction, size, speed, solidity and smoothness of a video.

For each frame the background is the median colour of the border pixels; the object is every pixel far enough from
it, split into 8-connected blobs (specks below a few pixels are codec noise and ignored). From those masks:

* colour: the mean colour of the object pixels over the clip, read as the nearest palette colour;
* shape: per frame, the world's templates (filled circle, square, upward triangle, :func:`dcm_demo.world.shape_mask`)
  are fitted to the largest blob, cut near half its contrast (:func:`outline`), over a small range of sides and
  positions around its bounding box; the template with the highest IoU is that frame's shape, and the video's shape
  is the majority over frames (ties go to the higher mean IoU). The best fit's side is the frame's object side;
* size: the median fitted side, read as the size word whose rendered side is nearest (log scale);
* direction and speed: the least-squares velocity of the object's centroid (px / frame), read as the nearest
  direction and the nearest speed word (log scale);
* solidity: share of frames holding more than one blob or a hole, the area of the last frames over the first ones,
  and ``solid_ok``, a video whose object is found in every frame as one blob without holes and whose area stays
  within a factor :data:`AREA_TOLERANCE`;
* jitter (mean size of the centroid's second differences) and consistency (stability of area and colour).

Accuracies come with Wilson score intervals (:func:`wilson_interval`) and the chance level of the world's
vocabulary (:func:`chance_levels`). Pure numpy; no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dcm_demo.world import (
    COLOURS,
    DIRECTIONS,
    SIZES,
    SPEEDS,
    Attributes,
    WorldConfig,
    object_side,
    object_speed,
    shape_mask,
)

# A pixel belongs to the object when its colour is this far (L2, 0-255 scale) from the frame's background.
OBJECT_THRESHOLD = 60.0
# The shape is fitted to the blob's pixels at least this share of its contrast from the background (the blob's
# CONTRAST_PERCENTILE-th percentile distance, robust to a few over-bright pixels). Below half contrast because the
# MP4's half-resolution chroma spreads a blue edge over two pixels, and a cut at 0.5 shrank small circles to squares.
EDGE_LEVEL = 0.4
CONTRAST_PERCENTILE = 90
# A frame with fewer object pixels than this has no object; a blob or hole smaller than this is codec speckle.
MIN_OBJECT_PIXELS = 4
# A "mask" covering more than this share of the frame is no object (e.g. noise): the frame counts as empty.
MAX_OBJECT_FRACTION = 0.5
# Net travel (pixels over the clip) below which a video counts as not moving: no direction.
MIN_DISPLACEMENT = 2.0
# Template sides tried: the blob's bounding-box extent +- this many pixels (blur and thresholds move edges by ~1 px).
SIDE_SEARCH = 2
# Template positions tried: +- this many pixels around the centre of the blob's bounding box.
OFFSET_SEARCH = 2
# Frames averaged at each end of the clip for the area growth (the causal VAE's first latent frame is one frame).
EDGE_FRAMES = 4
# A solid object's area stays within this factor from the first frames to the last.
AREA_TOLERANCE = 1.5
# Two-sided 95 % normal quantile of the confidence intervals.
Z_95 = 1.959963984540054
# The 0/1 per-video scores: ShapesBench's accuracy metrics.
ACCURACY_METRICS = ("colour", "shape", "direction", "size", "speed", "solid")


@dataclass(frozen=True, kw_only=True)
class VideoScore:
    """Per-video results; the ``*_ok`` fields are 0/1, the others continuous."""

    colour_ok: float
    shape_ok: float
    direction_ok: float
    size_ok: float
    speed_ok: float
    solid_ok: float
    multi_blob_frames: float  # share of found frames with more than one blob
    hole_frames: float  # share of found frames whose object has a hole
    area_first: float  # mean object area (pixels) of the first EDGE_FRAMES found frames
    area_last: float  # ... and of the last EDGE_FRAMES
    area_growth: float  # area_last / area_first
    jitter: float  # mean |second difference| of the centroid trajectory, pixels (lower is smoother)
    consistency: float  # (1 - relative variation of area and colour across frames) x share of frames with the object
    found_frames: float  # share of frames where an object was found
    predicted: dict


def wilson_interval(successes: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), as fractions in [0, 1].

    Args:
        successes: k, how many of the n trials succeeded.
        n: number of trials (> 0).
        z: normal quantile of the confidence level (default 95 %, two-sided).
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def chance_levels(world: WorldConfig) -> dict[str, float]:
    """Accuracy of guessing each attribute uniformly from the world's vocabulary, in percent."""
    return {
        "colour_acc": 100 / len(world.colours), "shape_acc": 100 / len(world.shapes),
        "direction_acc": 100 / len(world.directions), "size_acc": 100 / len(SIZES), "speed_acc": 100 / len(SPEEDS),
    }  # fmt: skip


def background_distance(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) float32: each pixel's colour distance (L2, 0-255) to its frame's background,
    the median colour of the frame's border pixels."""
    x = frames.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # (F, 2H + 2W, 3)
    background = np.median(border, axis=1)  # (F, 3)
    return np.linalg.norm(x - background[:, None, None, :], axis=-1)


def object_masks(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) bool object masks: pixels :data:`OBJECT_THRESHOLD` from the background."""
    return background_distance(frames) > OBJECT_THRESHOLD


def outline(blob: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The pixels of ``blob`` (H, W) bool at least :data:`EDGE_LEVEL` of the blob's contrast from the background
    (``distance`` (H, W)): a blurred edge cut near half contrast sits where the sharp edge was, whatever the colour."""
    contrast = np.percentile(distance[blob], CONTRAST_PERCENTILE)
    return blob & (distance >= EDGE_LEVEL * contrast)


def label_components(masks: np.ndarray, *, diagonal: bool = True) -> np.ndarray:
    """(..., H, W) bool -> (..., H, W) int labels: 0 off the mask, one positive id per connected component
    (8-connected with ``diagonal``, else 4-connected). Label propagation: every pixel takes the largest id among
    itself and its neighbours on the mask until nothing changes (vectorised over the leading axes)."""
    labels = np.where(masks, np.arange(1, masks.size + 1).reshape(masks.shape), 0)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy or dx) and (diagonal or not (dy and dx))]
    while True:
        padded = np.pad(labels, [(0, 0)] * (masks.ndim - 2) + [(1, 1), (1, 1)])
        h, w = masks.shape[-2:]
        grown = labels.copy()
        for dy, dx in shifts:
            np.maximum(grown, padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], out=grown)
        grown = np.where(masks, grown, 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def frame_blobs(labels: np.ndarray) -> list[list[np.ndarray]]:
    """(F, H, W) component labels -> per frame, the masks of its blobs of at least :data:`MIN_OBJECT_PIXELS`
    pixels, largest first."""
    result = []
    for frame in labels:
        ids, counts = np.unique(frame[frame > 0], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        result.append([frame == ids[i] for i in order if counts[i] >= MIN_OBJECT_PIXELS])
    return result


def hole_pixels(masks: np.ndarray) -> np.ndarray:
    """(F, H, W) bool -> (F,) number of background pixels enclosed by the object: those no 4-connected path of
    background pixels links to the frame's border (flood fill from the border)."""
    outside = np.zeros_like(masks)
    for edge in ((..., 0, slice(None)), (..., -1, slice(None)), (..., slice(None), 0), (..., slice(None), -1)):
        outside[edge] = ~masks[edge]
    while True:
        padded = np.pad(outside, [(0, 0), (1, 1), (1, 1)])
        grown = outside | padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
        grown &= ~masks
        if np.array_equal(grown, outside):
            return (~masks & ~outside).reshape(len(masks), -1).sum(1)
        outside = grown


@cache
def _template(shape: str, side: int) -> np.ndarray:
    return shape_mask(shape, side)


def fit_templates(mask: np.ndarray, shapes: tuple[str, ...]) -> dict[str, tuple[float, int]]:
    """``{shape: (best IoU, its side)}``: each shape's template (:func:`shape_mask`) placed over ``mask`` (H, W) bool
    at sides within :data:`SIDE_SEARCH` of the mask's bounding-box extent and positions within
    :data:`OFFSET_SEARCH` of its centre."""
    ys, xs = np.nonzero(mask)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    centre_y, centre_x = (ys.max() + ys.min() + 1) / 2, (xs.max() + xs.min() + 1) / 2
    area = int(mask.sum())
    pad = extent + SIDE_SEARCH + OFFSET_SEARCH
    padded = np.pad(mask, pad)
    best = {shape: (0.0, extent) for shape in shapes}
    for side in range(max(2, extent - SIDE_SEARCH), extent + SIDE_SEARCH + 1):
        top = int(round(centre_y - side / 2)) + pad - OFFSET_SEARCH
        left = int(round(centre_x - side / 2)) + pad - OFFSET_SEARCH
        span = side + 2 * OFFSET_SEARCH
        windows = sliding_window_view(padded[top : top + span, left : left + span], (side, side))  # (O, O, s, s)
        for shape in shapes:
            template = _template(shape, side)
            intersection = (windows & template).sum(axis=(-1, -2))  # (O, O)
            iou = float((intersection / (area + template.sum() - intersection)).max())
            if iou > best[shape][0]:
                best[shape] = (iou, side)
    return best


def nearest_on_log_scale(value: float, options: dict[str, float]) -> str:
    """The key of ``options`` whose value is nearest ``value`` in ratio (log distance)."""
    return min(options, key=lambda name: abs(np.log(max(value, 1e-6) / options[name])))


def velocity(centroids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Least-squares slope (2,) (dy, dx) px / frame of centroids (T, 2) observed at frame indices times (T,)."""
    t = times - times.mean()
    return (t[:, None] * (centroids - centroids.mean(0))).sum(0) / max(float((t**2).sum()), 1e-9)


def _shapes_per_frame(outlines: list[np.ndarray], shapes: tuple[str, ...]):
    """Per found frame: the best-fitting shape, its side, and every shape's IoU."""
    fits = [fit_templates(mask, shapes) for mask in outlines]
    best = [max(fit, key=lambda s: fit[s][0]) for fit in fits]
    return best, [fit[b][1] for fit, b in zip(fits, best)], [{s: fit[s][0] for s in shapes} for fit in fits]


def _video_shape(best: list[str], ious: list[dict[str, float]]) -> str:
    """Majority over frames; a tie goes to the shape with the higher mean IoU."""
    votes = Counter(best)
    top = max(votes.values())
    tied = [s for s, n in votes.items() if n == top]
    return max(tied, key=lambda s: np.mean([frame[s] for frame in ious]))


def score_video(frames: np.ndarray, expected: Attributes, world: WorldConfig | None = None) -> VideoScore:
    """Scores one video (F, H, W, 3) uint8 against the attributes its prompt asked for, in ``world`` (its size,
    speed and vocabulary; default :class:`WorldConfig`)."""
    world = world or WorldConfig()
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
    distance = background_distance(frames)
    masks = distance > OBJECT_THRESHOLD
    areas = masks.reshape(len(masks), -1).sum(1)
    found = (areas >= MIN_OBJECT_PIXELS) & (areas <= MAX_OBJECT_FRACTION * masks[0].size)
    idx = np.flatnonzero(found)
    object_blobs = frame_blobs(label_components(masks[idx]))
    keep = [i for i, b in enumerate(object_blobs) if b]  # frames whose object pixels are not all specks
    idx, object_blobs = idx[keep], [object_blobs[i] for i in keep]
    if not len(idx):
        return VideoScore(colour_ok=0.0, shape_ok=0.0, direction_ok=0.0, size_ok=0.0, speed_ok=0.0, solid_ok=0.0,
                          multi_blob_frames=0.0, hole_frames=0.0, area_first=0.0, area_last=0.0,
                          area_growth=float("nan"), jitter=float("inf"),
                          consistency=0.0, found_frames=0.0, predicted={})  # fmt: skip
    found_share = len(idx) / len(frames)
    # Colour: nearest palette entry to the mean object colour.
    colours = np.array([frames[t][masks[t]].mean(0) for t in idx])  # (T, 3)
    palette = {name: np.array(COLOURS[name], dtype=np.float32) for name in world.colours}
    colour = min(palette, key=lambda name: np.linalg.norm(palette[name] - colours.mean(0)))
    # Shape and size: template fits on the largest blob of each frame.
    outlines = [outline(b[0], distance[t]) for t, b in zip(idx, object_blobs)]
    best, sides, ious = _shapes_per_frame(outlines, world.shapes)
    shape = _video_shape(best, ious)
    side = float(np.median(sides))
    size = nearest_on_log_scale(side, {name: object_side(name, world) for name in SIZES})
    # Direction and speed: least-squares velocity of the centroid of all object pixels.
    centroids = np.array([np.argwhere(masks[t]).mean(0) for t in idx])  # (T, 2) (y, x)
    v = velocity(centroids, idx.astype(np.float64)) if len(idx) > 1 else np.zeros(2)
    pace = float(np.linalg.norm(v))
    direction = None
    if pace * (len(frames) - 1) >= MIN_DISPLACEMENT:
        direction = max(world.directions, key=lambda name: float(np.dot(v / pace, DIRECTIONS[name])))
    speed = nearest_on_log_scale(pace, {name: object_speed(name, world) for name in SPEEDS})
    # Solidity: one blob, no holes, a steady area.
    areas = areas[idx].astype(np.float64)
    multi = float(np.mean([len(b) > 1 for b in object_blobs]))
    holes = float(np.mean(hole_pixels(masks[idx]) >= MIN_OBJECT_PIXELS))
    edge = min(EDGE_FRAMES, len(idx))
    first, last = float(areas[:edge].mean()), float(areas[-edge:].mean())
    growth = last / first
    solid = found_share == 1.0 and multi == 0.0 and holes == 0.0 and 1 / AREA_TOLERANCE <= growth <= AREA_TOLERANCE
    jitter = float(np.abs(np.diff(centroids, n=2, axis=0)).sum(1).mean()) if len(centroids) > 2 else 0.0
    area_var = areas.std() / max(areas.mean(), 1.0)
    colour_var = colours.std(0).mean() / 255.0
    # Frames where the object vanished count against consistency too.
    consistency = float(np.clip(1.0 - area_var - colour_var, 0.0, 1.0) * found_share)
    return VideoScore(
        colour_ok=float(colour == expected.colour), shape_ok=float(shape == expected.shape),
        direction_ok=float(direction == expected.direction), size_ok=float(size == expected.size),
        speed_ok=float(speed == expected.speed), solid_ok=float(solid), multi_blob_frames=multi, hole_frames=holes,
        area_first=first, area_last=last, area_growth=growth, jitter=jitter, consistency=consistency,
        found_frames=found_share,
        predicted={"colour": colour, "shape": shape, "direction": direction, "size": size, "speed": speed,
                   "side_px": side, "speed_px": pace, "shape_votes": dict(Counter(best))},
    )  # fmt: skip


def pixel_distance(video: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute pixel difference in [0, 1] between two videos of the same shape."""
    if video.shape != reference.shape:
        raise ValueError(f"videos must have the same shape, got {video.shape} and {reference.shape}")
    return float(np.abs(video.astype(np.float32) - reference.astype(np.float32)).mean() / 255.0)


def summarise(scores: list[VideoScore]) -> dict[str, float | list[float]]:
    """Over a set of videos: each accuracy in percent with its 95 % Wilson interval (``<name>_acc`` and
    ``<name>_acc_ci`` = [low, high]), multi-blob and hole frames (percent), the median area growth and the mean areas
    of the first and last frames (px), mean jitter (px) and consistency (percent)."""
    if not scores:
        raise ValueError("summarise needs at least one score, got none")
    summary: dict[str, float | list[float]] = {}
    for name in ACCURACY_METRICS:
        hits = int(sum(getattr(s, f"{name}_ok") for s in scores))
        summary[f"{name}_acc"] = 100 * hits / len(scores)
        summary[f"{name}_acc_ci"] = [100 * bound for bound in wilson_interval(hits, len(scores))]
    finite = [s.jitter for s in scores if np.isfinite(s.jitter)]
    growth = [s.area_growth for s in scores if np.isfinite(s.area_growth)]
    summary |= {
        "multi_blob_frames": 100 * float(np.mean([s.multi_blob_frames for s in scores])),
        "hole_frames": 100 * float(np.mean([s.hole_frames for s in scores])),
        "area_growth": float(np.median(growth)) if growth else float("nan"),
        "area_first_px": float(np.mean([s.area_first for s in scores])),
        "area_last_px": float(np.mean([s.area_last for s in scores])),
        "jitter_px": float(np.mean(finite)) if finite else float("inf"),
        "consistency": 100 * float(np.mean([s.consistency for s in scores])),
    }
    return summary
