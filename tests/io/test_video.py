"""H.264 MP4 encode/decode through the bundled ffmpeg: frames survive within codec tolerance."""

import numpy as np
import pytest

from dcm.io.video import decode_mp4, encode_mp4, read_mp4, write_mp4

# Mean absolute error (0-255 levels) we accept from x264 at CRF 18 on smooth synthetic frames.
MAX_MEAN_ABS_ERROR = 4.0


def moving_square(num_frames=17, size=64):
    frames = np.full((num_frames, size, size, 3), 30, dtype=np.uint8)
    for f in range(num_frames):
        x = 4 + 2 * f
        frames[f, 20:36, x : x + 16] = (220, 40, 40)
    return frames


def test_bytes_roundtrip():
    frames = moving_square()
    data = encode_mp4(frames, fps=8)
    assert data[4:8] == b"ftyp"
    video = decode_mp4(data)
    assert video.frames.shape == frames.shape
    assert video.fps == pytest.approx(8)
    err = np.abs(video.frames.astype(float) - frames.astype(float)).mean()
    assert err < MAX_MEAN_ABS_ERROR
    # Content, not just shape: the square is where it should be in the last frame.
    assert video.frames[-1, 28, 4 + 2 * 16 + 8, 0] > 150 and video.frames[-1, 28, 4, 0] < 80


def test_file_roundtrip(tmp_path):
    frames = moving_square(num_frames=9, size=32)
    path = tmp_path / "v.mp4"
    write_mp4(frames, path, fps=16)
    video = read_mp4(path)
    assert video.frames.shape == (9, 32, 32, 3) and video.fps == pytest.approx(16)


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((4, 8, 8), dtype=np.uint8), "uint8"),
        (np.zeros((4, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "at least one"),
        (np.zeros((2, 7, 8, 3), dtype=np.uint8), "even"),
    ],
)
def test_bad_frames_rejected(frames, match):
    with pytest.raises(ValueError, match=match):
        encode_mp4(frames, fps=8)


def test_bad_fps_rejected(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(moving_square(1), tmp_path / "x.mp4", fps=0)
