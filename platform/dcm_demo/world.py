"""A synthetic video world for the demo model and ShapesBench: coloured shapes moving over a background.

Every clip is deterministic from its seed and has a caption such as "a small blue square moving up slowly".
Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx) per frame unit
SIZES = {"small": 0.18, "large": 0.30}  # object side as a fraction of the frame side
SPEEDS = {"slowly": 0.5, "": 1.0}  # pixels per frame, as a fraction of `pixels_per_frame`
MIN_SIDE = 4  # smallest object side in pixels, whatever the frame size


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Size and vocabulary of the world.

    Args:
        size: frame height and width in pixels.
        num_frames: frames per clip.
        pixels_per_frame: object speed at normal pace.
        background_level: grey level range of plain backgrounds.
        textured_probability: share of clips with a faint noise texture on the background.
    """

    size: int = 64
    num_frames: int = 17
    pixels_per_frame: float = 1.5
    background_level: tuple[int, int] = (10, 60)
    textured_probability: float = 0.3
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    directions: tuple[str, ...] = tuple(DIRECTIONS)

    def __post_init__(self) -> None:
        travel = self.pixels_per_frame * (self.num_frames - 1)
        if travel + max(SIZES.values()) * self.size >= self.size:
            raise ValueError(f"objects would leave a {self.size}px frame in {self.num_frames} frames: lower the speed")


@dataclass(frozen=True, kw_only=True)
class Attributes:
    """What a caption says about a clip."""

    colour: str
    shape: str
    direction: str
    size: str = "large"
    speed: str = ""

    def caption(self) -> str:
        size = "small " if self.size == "small" else ""
        speed = f" {self.speed}" if self.speed else ""
        return f"a {size}{self.colour} {self.shape} moving {self.direction}{speed}"


@dataclass(frozen=True, kw_only=True)
class Clip:
    """A rendered clip: frames (F, H, W, 3) uint8, its attributes and the object's centre per frame (F, 2) (y, x)."""

    frames: np.ndarray
    attributes: Attributes
    trajectory: np.ndarray = field(repr=False)

    @property
    def caption(self) -> str:
        return self.attributes.caption()


def parse_caption(text: str) -> Attributes:
    """Inverse of :meth:`Attributes.caption`; raises ValueError for text outside the world's vocabulary."""
    words = text.lower().split()
    found = {
        "colour": [w for w in words if w in COLOURS],
        "shape": [w for w in words if w in SHAPES],
        "direction": [w for w in words if w in DIRECTIONS],
    }
    missing = [k for k, v in found.items() if len(v) != 1]
    if missing:
        raise ValueError(f"caption {text!r} must name exactly one {', one '.join(missing)}")
    return Attributes(
        colour=found["colour"][0], shape=found["shape"][0], direction=found["direction"][0],
        size="small" if "small" in words else "large", speed="slowly" if "slowly" in words else "",
    )  # fmt: skip


def shape_mask(shape: str, side: int) -> np.ndarray:
    """(side, side) bool mask of a filled circle, square or upward triangle."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    if shape == "circle":
        r = side / 2
        return (yy - r) ** 2 + (xx - r) ** 2 <= r**2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "triangle":
        return np.abs(xx - side / 2) <= yy / 2
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def sample_attributes(rng: np.random.Generator, config: WorldConfig) -> Attributes:
    return Attributes(
        colour=str(rng.choice(config.colours)), shape=str(rng.choice(config.shapes)),
        direction=str(rng.choice(config.directions)), size=str(rng.choice(list(SIZES))),
        speed=str(rng.choice(list(SPEEDS))),
    )  # fmt: skip


def object_side(size: str, config: WorldConfig) -> int:
    """Side in pixels of the square an object of this size word is drawn in."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    return max(MIN_SIDE, int(round(SIZES[size] * config.size)))


def object_speed(speed: str, config: WorldConfig) -> float:
    """Pixels per frame of an object moving at this speed word ("" is normal pace)."""
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {tuple(SPEEDS)}, got {speed!r}")
    return config.pixels_per_frame * SPEEDS[speed]


def render(attributes: Attributes, config: WorldConfig, rng: np.random.Generator) -> Clip:
    """Renders a clip of the given attributes; start position and background come from ``rng``."""
    n, f = config.size, config.num_frames
    side = object_side(attributes.size, config)
    mask = shape_mask(attributes.shape, side)
    speed = object_speed(attributes.speed, config)
    dy, dx = DIRECTIONS[attributes.direction]
    travel = speed * (f - 1)
    # Start so that the whole path stays inside the frame.
    y_lo, y_hi = (travel if dy < 0 else 0), n - side - (travel if dy > 0 else 0)
    x_lo, x_hi = (travel if dx < 0 else 0), n - side - (travel if dx > 0 else 0)
    y0, x0 = rng.uniform(y_lo, y_hi), rng.uniform(x_lo, x_hi)
    level = rng.integers(*config.background_level)
    background = np.full((n, n, 3), level, dtype=np.float32)
    if rng.random() < config.textured_probability:
        background += rng.normal(0, 6, size=(n, n, 1)).astype(np.float32)
    colour = np.array(COLOURS[attributes.colour], dtype=np.float32)
    frames = np.empty((f, n, n, 3), dtype=np.uint8)
    trajectory = np.empty((f, 2), dtype=np.float32)
    for t in range(f):
        top, left = int(round(y0 + dy * speed * t)), int(round(x0 + dx * speed * t))
        frame = background.copy()
        frame[top : top + side, left : left + side][mask] = colour
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
        trajectory[t] = (top + side / 2, left + side / 2)
    return Clip(frames=frames, attributes=attributes, trajectory=trajectory)


def clip_of(attributes: Attributes, seed: int, config: WorldConfig) -> Clip:
    """A clip of the given attributes, its layout and background deterministic from ``seed``."""
    return render(attributes, config, np.random.default_rng(seed))


def make_clip(seed: int, config: WorldConfig | None = None) -> Clip:
    """A random clip of the world, deterministic from ``seed``."""
    config = config or WorldConfig()
    rng = np.random.default_rng(seed)
    return render(sample_attributes(rng, config), config, rng)
