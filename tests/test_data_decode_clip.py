"""decode_clip: any frame-index rule, a per-frame conversion applied as frames are decoded."""
from functools import partial

import numpy as np
import pytest
import torch

import dataloaders.decode as decode
from dataloaders.decode import decode_clip
from dataloaders.sampling import sample_indices, xclip_view_indices
from dataloaders.transforms import crop_frame, resize_and_crop
from tests import video_factory as vf

VIDEOS = {
    "gops": (vf.write_video, dict(num_frames=60, width=160, height=96, keyint=12)),
    "frames_zero": (vf.write_video_without_frame_count, dict(num_frames=45, width=160, height=96, keyint=6)),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode_clip")
    made = {}
    for seed, (name, (writer, kwargs)) in enumerate(VIDEOS.items()):
        path = writer(str(folder / f"{name}.mp4"), seed=seed, **kwargs)
        made[name] = (path, vf.decode_all_frames(path))
    return made


class CountingConvert:
    """A conversion that records every frame it is given (here: a 2x2 corner of the frame)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frame):
        self.calls += 1
        return frame[:2, :2].copy()


@pytest.mark.parametrize("name", list(VIDEOS))
@pytest.mark.parametrize("seek", [True, False])
def test_each_distinct_index_is_converted_once(videos, name, seek):
    path, reference = videos[name]
    wanted = np.array([30, 1, 30, 44, 1, 0, 30])
    convert = CountingConvert()
    frames, num_frames = decode_clip(path, lambda n: wanted, convert, seek=seek)
    assert num_frames == len(reference) and convert.calls == 4
    assert len(frames) == len(wanted) and frames[0] is frames[2] is frames[6]
    for got, i in zip(frames, wanted):
        assert np.array_equal(got, reference[i][:2, :2])


@pytest.mark.parametrize("name", list(VIDEOS))
def test_multi_view_rule_picks_the_reference_frames(videos, name):
    path, reference = videos[name]
    sampler = partial(xclip_view_indices, num_segments=8, num_clips=3)
    frames, num_frames = decode_clip(path, sampler)
    expected = xclip_view_indices(len(reference), 8, 3)
    assert len(frames) == 24 and len(set(expected.tolist())) > 8
    assert all(np.array_equal(f, reference[i]) for f, i in zip(frames, expected))


def test_sampler_outside_the_video_is_an_error(videos):
    with pytest.raises(ValueError, match="sampler"):
        decode_clip(videos["gops"][0], lambda n: np.array([0, n]))


def test_frame_count_below_the_packet_count_decodes_again(videos, monkeypatch):
    """Sequential decoding first keeps the frames sampled for one frame per packet; when the
    decoder gives another count it decodes again with the indices for the real count."""
    path, reference = videos["frames_zero"]
    calls = []
    original = decode._decode_packets

    def one_frame_short(codec_context, packets):
        calls.append(len(packets))
        return (frame for k, frame in enumerate(original(codec_context, packets)) if k < len(packets) - 1)

    monkeypatch.setattr(decode, "_decode_packets", one_frame_short)
    frames, num_frames = decode_clip(path, partial(sample_indices, num_segments=8, train=False))
    assert calls == [45, 45] and num_frames == 44
    expected = sample_indices(44, 8, False)
    assert not np.array_equal(expected, sample_indices(45, 8, False))
    assert all(np.array_equal(f, reference[i]) for f, i in zip(frames, expected))


@pytest.mark.parametrize("height,width", [(240, 320), (300, 200), (100, 150), (224, 398), (500, 224),
                                          (225, 223)])
def test_per_frame_crop_equals_the_batched_transform(height, width):
    """Retrieval now crops each frame as it is decoded; the result is the batched one, bit for bit."""
    frames = np.random.default_rng(height * width).integers(0, 256, size=(5, height, width, 3),
                                                            dtype=np.uint8)
    per_frame = torch.stack([crop_frame(f, 224) for f in frames])
    assert per_frame.is_contiguous() and per_frame.shape == (5, 3, 224, 224)
    assert torch.equal(per_frame, resize_and_crop(frames, 224))
