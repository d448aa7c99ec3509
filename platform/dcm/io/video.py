"""H.264 MP4 encoding and decoding with imageio-ffmpeg's bundled ffmpeg (works offline).

ffmpeg cannot write an MP4 into a pipe (the moov atom needs a seekable file), so bytes go through a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import imageio_ffmpeg
import numpy as np

# x264's constant rate factor: 0 is lossless, 23 its default; 18 is visually lossless for these clips.
DEFAULT_CRF = 18
CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"  # the format every browser and player decodes
FFMPEG_LOG_LEVEL = "error"


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What a decoded MP4 contains: frames (F, H, W, 3) uint8 and its frame rate."""

    frames: np.ndarray
    fps: float


def check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"frames must be a (F, H, W, 3) uint8 array, got shape {shape} dtype {dtype}")
    if frames.shape[0] < 1:
        raise ValueError("frames must contain at least one frame, got 0")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 with {PIXEL_FORMAT} needs even height and width, got {height}x{width}")


def write_mp4(frames: np.ndarray, path: str | os.PathLike, *, fps: float, crf: int = DEFAULT_CRF) -> None:
    """Encodes (F, H, W, 3) uint8 frames as an H.264 MP4 at ``path``."""
    check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec=CODEC,
        pix_fmt_out=PIXEL_FORMAT,
        macro_block_size=1,
        quality=None,
        output_params=["-crf", str(crf), "-movflags", "+faststart"],
        ffmpeg_log_level=FFMPEG_LOG_LEVEL,
    )
    writer.send(None)  # start the generator
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def encode_mp4(frames: np.ndarray, *, fps: float, crf: int = DEFAULT_CRF) -> bytes:
    """Encodes (F, H, W, 3) uint8 frames and returns the MP4 bytes."""
    with tempfile.TemporaryDirectory(prefix="dcm-video-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        write_mp4(frames, path, fps=fps, crf=crf)
        with open(path, "rb") as f:
            return f.read()


def read_mp4(path: str | os.PathLike) -> VideoInfo:
    """Decodes an MP4 file into (F, H, W, 3) uint8 frames."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    if not frames:
        raise ValueError(f"{path} contains no video frames")
    return VideoInfo(frames=np.stack(frames), fps=float(meta["fps"]))


def decode_mp4(data: bytes) -> VideoInfo:
    """Decodes MP4 bytes into (F, H, W, 3) uint8 frames."""
    with tempfile.TemporaryDirectory(prefix="dcm-video-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        with open(path, "wb") as f:
            f.write(data)
        return read_mp4(path)


@dataclass(frozen=True, kw_only=True)
class VideoMeta:
    """What ffmpeg reports about a video before decoding it."""

    width: int
    height: int
    fps: float
    duration: float

    @property
    def num_frames_estimate(self) -> int:
        return int(round(self.duration * self.fps))


def probe(path: str | os.PathLike) -> VideoMeta:
    """Size, frame rate and duration of a video file (raises ValueError for files ffmpeg cannot read)."""
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as err:
        raise ValueError(f"{path}: not a readable video ({err})") from err
    width, height = meta["size"]
    return VideoMeta(width=width, height=height, fps=float(meta["fps"]), duration=float(meta.get("duration") or 0.0))


def read_frames_at(path: str | os.PathLike, indices: np.ndarray) -> np.ndarray:
    """Decodes only the frames at ``indices`` (ascending) in one streaming pass: (len(indices), H, W, 3) uint8."""
    wanted = {int(i): n for n, i in enumerate(indices)}
    last = int(max(indices))
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        out = np.zeros((len(indices), height, width, 3), dtype=np.uint8)
        found = 0
        for i, buf in enumerate(reader):
            if i in wanted:
                out[wanted[i]] = np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
                found += 1
            if i >= last:
                break
        reader.close()
    except (OSError, RuntimeError, StopIteration) as err:
        raise ValueError(f"{path}: not a readable video ({err})") from err
    if found != len(wanted):
        raise ValueError(
            f"{path}: has fewer frames than expected (needed frame {last}, decoded {found} of {len(wanted)})"
        )
    return out
