"""Clip extraction from decoded videos: frame sampling, aspect rejection, resize + center crop, streaming decode."""

import numpy as np
import pytest

from dcm.io.video import probe, read_frames_at, write_mp4
from dcm.preprocess import ClipConfig, ClipRejected, make_clip, resize_center_crop, sample_frame_indices

CLIP = ClipConfig(num_frames=5, height=32, width=32, fps=8)


def test_frame_sampling_at_target_fps():
    # 24 fps source, 8 fps target: every third frame.
    assert sample_frame_indices(100, 24.0, CLIP).tolist() == [0, 3, 6, 9, 12]
    later = ClipConfig(num_frames=3, height=8, width=8, fps=4, start_seconds=1.0)
    assert sample_frame_indices(100, 10.0, later).tolist() == [10, 12, 15]


def test_too_short_is_rejected_with_reason():
    with pytest.raises(ClipRejected, match="need 0.50 s") as info:
        sample_frame_indices(10, 24.0, CLIP)
    assert info.value.reason == "too_short"


def test_aspect_rejection_and_crop():
    wide = np.zeros((2, 20, 100, 3), dtype=np.uint8)  # 5:1 vs 1:1 target
    with pytest.raises(ClipRejected) as info:
        resize_center_crop(wide, CLIP)
    assert info.value.reason == "aspect"
    # 4:3 source: the centre column survives, the sides are cropped.
    frames = np.zeros((1, 48, 64, 3), dtype=np.uint8)
    frames[:, :, 28:36] = 255  # a white vertical bar in the middle
    frames[:, :, :4] = 128  # a grey strip at the left edge, cropped away
    out = resize_center_crop(frames, CLIP)
    assert out.shape == (1, 32, 32, 3)
    assert out[0, 16, 16, 0] > 200 and out[0, 16, 0, 0] < 60


def test_make_clip_from_a_real_mp4(tmp_path):
    source = np.zeros((48, 48, 64, 3), dtype=np.uint8)
    for f in range(48):
        source[f, :, :, 0] = f * 5  # red level encodes the frame index
    path = tmp_path / "src.mp4"
    write_mp4(source, path, fps=24, crf=0)
    meta = probe(path)
    assert (meta.width, meta.height, meta.fps) == (64, 48, 24.0)
    indices = sample_frame_indices(meta.num_frames_estimate, meta.fps, CLIP)
    frames = read_frames_at(path, indices)
    assert frames.shape == (5, 48, 64, 3)
    red = frames[:, 24, 32, 0].astype(int)
    assert np.all(np.abs(red - indices * 5) <= 3)  # the right frames, in order
    clip = make_clip(frames, meta.fps, ClipConfig(num_frames=5, height=32, width=32, fps=24))
    assert clip.shape == (5, 32, 32, 3)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="not a readable video"):
        probe(bad)
