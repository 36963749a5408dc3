"""Frame sampling, windows and the clip transform against SPEC §5's formulas."""
import numpy as np
import pytest
import torch

from dataloaders.sampling import (clip_length, sample_indices, tsn_indices, uniform_indices,
                                  valid_length, window_range)
from dataloaders.transforms import CLIP_MEAN, CLIP_STD, center_crop_offsets, frames_to_clip


def spec_tsn(num_frames, t, rng):
    """SPEC: avg = n // T; avg > 0: t*avg + randint(avg); else clip(arange(T), 0, n-1)."""
    avg = num_frames // t
    if avg > 0:
        return np.multiply(list(range(t)), avg) + rng.randint(avg, size=t)
    return np.clip(np.arange(t), 0, num_frames - 1)


def spec_uniform(num_frames, t):
    if num_frames > t:
        tick = num_frames / float(t)
        return np.array([int(tick / 2.0 + tick * x) for x in range(t)])
    return np.clip(np.arange(t), 0, num_frames - 1)


def test_uniform_indices_known_values():
    assert uniform_indices(45, 12).tolist() == [1, 5, 9, 13, 16, 20, 24, 28, 31, 35, 39, 43]
    assert uniform_indices(540, 12).tolist() == [22 + 45 * t for t in range(12)]
    assert uniform_indices(13, 12).tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
    assert uniform_indices(12, 12).tolist() == list(range(12))
    assert uniform_indices(5, 12).tolist() == [0, 1, 2, 3, 4] + [4] * 7
    assert uniform_indices(1, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("num_frames", [1, 2, 5, 11, 12, 13, 23, 24, 45, 100, 540, 1001])
@pytest.mark.parametrize("t", [1, 4, 12, 64])
def test_sampling_matches_spec_formulas(num_frames, t):
    assert np.array_equal(uniform_indices(num_frames, t), spec_uniform(num_frames, t))
    assert np.array_equal(sample_indices(num_frames, t, False), spec_uniform(num_frames, t))
    for seed in range(3):
        got = tsn_indices(num_frames, t, np.random.RandomState(seed))
        assert np.array_equal(got, spec_tsn(num_frames, t, np.random.RandomState(seed)))
        assert got.dtype == np.int64 and got.shape == (t,)
        assert got.min() >= 0 and got.max() < num_frames
        assert np.all(np.diff(got) >= 0)


def test_tsn_draws_one_frame_per_segment_from_the_global_rng():
    np.random.seed(7)
    got = tsn_indices(45, 12)
    np.random.seed(7)
    expected = np.arange(12) * 3 + np.random.randint(3, size=12)
    assert np.array_equal(got, expected)
    assert all(3 * t <= i < 3 * t + 3 for t, i in enumerate(got))
    draws = {tuple(tsn_indices(540, 12)) for _ in range(20)}
    assert len(draws) == 20


def test_window_range_inclusive_end_and_frames_zero_fix():
    # int(2 * 3) = 6 .. min(int(5 * 3), 100) = 15, inclusive: 10 frames
    assert window_range(2, 5, 3.0, 100, 100) == (6, 16)
    assert window_range(0, 31, 3.0, 60, 60) == (0, 60)  # end capped by the video
    assert window_range(0, 31, 3.0, 100, 100) == (0, 94)
    # stream.frames == 0: the original caps at 0 (one frame); the FIX uses the decoded count
    assert window_range(0, 10, 3.0, 0, 50) == (0, 31)
    assert window_range(40, 50, 3.0, 60, 60) == (120, 120)  # starts after the end: empty


def test_clip_and_valid_length():
    assert clip_length(30, 40) == 30 and clip_length(30, 20) == 20 and clip_length(30, 0) == 30
    assert valid_length(5, 12) == 5 and valid_length(500, 12) == 12


@pytest.mark.parametrize("height,width,expected", [
    (224, 224, (0, 0)), (224, 398, (0, 87)), (398, 224, (87, 0)),
    (225, 300, (0, 38)), (227, 229, (2, 2)), (226, 300, (1, 38)),
])
def test_center_crop_offsets_follow_torchvision(height, width, expected):
    assert center_crop_offsets(height, width, 224) == expected
    from torchvision.transforms import CenterCrop
    image = torch.arange(height * width, dtype=torch.float64).view(1, height, width)
    top, left = expected
    assert torch.equal(CenterCrop(224)(image), image[:, top:top + 224, left:left + 224])


def test_frames_to_clip_crops_and_normalises_exactly():
    height, width = 224, 301  # offsets (0, 38): round(38.5) = 38
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, height, width, 3), dtype=np.uint8)
    clip = frames_to_clip(frames)
    assert clip.shape == (3, 3, 224, 224) and clip.dtype == torch.float32
    crop = frames[:, :, 38:38 + 224].astype(np.float32) / np.float32(255)
    mean = np.array(CLIP_MEAN, dtype=np.float32)
    std = np.array(CLIP_STD, dtype=np.float32)
    expected = ((crop - mean) / std).transpose(0, 3, 1, 2)
    assert np.array_equal(clip.numpy(), expected)


def test_frames_to_clip_constant_value():
    frames = np.full((1, 224, 224, 3), 255, dtype=np.uint8)
    clip = frames_to_clip(frames)
    for c in range(3):
        assert clip[0, c].unique().tolist() == pytest.approx([(1.0 - CLIP_MEAN[c]) / CLIP_STD[c]], abs=1e-6)


def test_resize_only_when_shorter_side_differs():
    rng = np.random.default_rng(1)
    portrait = rng.integers(0, 256, size=(2, 400, 224, 3), dtype=np.uint8)
    top, left = center_crop_offsets(400, 224, 224)
    manual = frames_to_clip(portrait[:, top:top + 224, left:left + 224])
    assert torch.equal(frames_to_clip(portrait), manual)  # already 224: no resampling at all
    # 320x240 -> shorter side 224: 298x224 (torchvision's rule), bicubic, then the centre crop
    uniform = np.full((1, 240, 320, 3), 77, dtype=np.uint8)
    clip = frames_to_clip(uniform)
    assert clip.shape == (1, 3, 224, 224)
    assert torch.allclose(clip, frames_to_clip(np.full((1, 224, 224, 3), 77, dtype=np.uint8)))
    small = frames_to_clip(rng.integers(0, 256, size=(1, 120, 160, 3), dtype=np.uint8))
    assert small.shape == (1, 3, 224, 224)
