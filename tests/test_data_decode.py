"""Decoding sampled frames from real H.264 videos: identical to a full decode, but sparser."""
from fractions import Fraction

import av
import numpy as np
import pytest

import dataloaders.decode as decode
from dataloaders.decode import PacketIndex, VideoDecodeError, read_frames
from dataloaders.sampling import sample_indices, uniform_indices, window_range
from tests import video_factory as vf

VIDEOS = {  # name -> (writer, kwargs)
    "landscape": (vf.write_video, dict(num_frames=200, width=398, height=224, keyint=6)),
    "portrait": (vf.write_video, dict(num_frames=60, width=224, height=398, keyint=12)),
    "single": (vf.write_video, dict(num_frames=1, width=160, height=96)),
    "long": (vf.write_video, dict(num_frames=500, width=96, height=64, keyint=25, bframes=2)),
    "no_bframes": (vf.write_video, dict(num_frames=90, width=160, height=96, keyint=10, bframes=0)),
    "open_gop": (vf.write_video, dict(num_frames=90, width=160, height=96, keyint=12,
                                      codec_options={"x264-params": "open-gop=1"})),
    "vfr": (vf.write_video, dict(num_frames=40, width=96, height=64, keyint=5,
                                 frame_pts=[t + (t // 4) * 3 for t in range(40)])),
    "ntsc": (vf.write_video, dict(num_frames=50, width=96, height=64, fps=Fraction(30000, 1001))),
    "frames_zero": (vf.write_video_without_frame_count, dict(num_frames=45, width=160, height=96, keyint=6)),
    "matroska": (vf.write_video, dict(num_frames=30, width=96, height=64, keyint=6,
                                      container_format="matroska")),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """name -> (path, reference frames of a full decode)."""
    folder = tmp_path_factory.mktemp("decode")
    made = {}
    for seed, (name, (writer, kwargs)) in enumerate(VIDEOS.items()):
        path = writer(str(folder / f"{name}.mp4"), seed=seed, **kwargs)
        made[name] = (path, vf.decode_all_frames(path))
    return made


def assert_frames(frames, reference, indices):
    assert frames.shape == (len(indices),) + reference[0].shape and frames.dtype == np.uint8
    for k, i in enumerate(indices):
        assert np.array_equal(frames[k], reference[i]), f"sample {k} (frame {i}) differs"


def test_written_videos_have_the_intended_properties(videos):
    assert len(videos["landscape"][1]) == 200 and videos["landscape"][1][0].shape == (224, 398, 3)
    assert videos["portrait"][1][0].shape == (398, 224, 3)
    assert len(videos["long"][1]) == 500 and len(videos["single"][1]) == 1
    assert vf.stream_frame_count(videos["frames_zero"][0]) == 0
    assert vf.stream_frame_count(videos["matroska"][0]) == 0
    assert vf.stream_frame_count(videos["landscape"][0]) == 200


@pytest.mark.parametrize("name", list(VIDEOS))
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("t", [1, 12, 64])
def test_sampled_frames_identical_to_full_decode(videos, name, train, t):
    path, reference = videos[name]
    for seed in (0, 1):
        frames, num_frames = read_frames(path, t, train, rng=np.random.RandomState(seed))
        assert num_frames == len(reference)
        expected = sample_indices(len(reference), t, train, np.random.RandomState(seed))
        assert_frames(frames, reference, expected)


@pytest.mark.parametrize("name", ["landscape", "long", "open_gop", "frames_zero"])
def test_sequential_path_gives_the_same_frames(videos, name):
    path, reference = videos[name]
    fast, n_fast = read_frames(path, 12, True, rng=np.random.RandomState(3))
    slow, n_slow = read_frames(path, 12, True, rng=np.random.RandomState(3), seek=False)
    assert n_fast == n_slow and np.array_equal(fast, slow)


@pytest.mark.parametrize("window,name", [((10, 20), "landscape"), ((0, 31), "landscape"),
                                         ((50, 80), "landscape"), ((2, 9), "frames_zero"),
                                         ((0, 100), "long"), ((30, 31), "long")])
@pytest.mark.parametrize("train", [False, True])
def test_time_window(videos, window, name, train):
    path, reference = videos[name]
    header = vf.stream_frame_count(path)
    first, stop = window_range(window[0], window[1], 3.0, header, len(reference))
    frames, num_frames = read_frames(path, 12, train, window=window, rng=np.random.RandomState(5))
    assert num_frames == stop - first
    expected = sample_indices(stop - first, 12, train, np.random.RandomState(5)) + first
    assert_frames(frames, reference, expected)


def test_window_after_the_end_is_an_error(videos):
    with pytest.raises(VideoDecodeError):
        read_frames(videos["portrait"][0], 12, False, window=(100, 200))


def packet_index(path):
    container = av.open(path)
    stream = container.streams.video[0]
    packets = [p for p in container.demux(stream) if p.size > 0]
    return PacketIndex(packets), packets, stream.frames


def test_restart_points(videos):
    index, packets, frames = packet_index(videos["landscape"][0])
    assert PacketIndex.is_trustworthy(packets, frames)
    assert index.restarts[0] == 0 and len(index.restarts) >= 200 // 6
    pts = np.array([p.pts for p in packets])
    for k in index.restarts:
        assert packets[k].is_keyframe and np.all(pts[:k] < pts[k]) and np.all(pts[k:] >= pts[k])
        assert np.searchsorted(index.sorted_pts, pts[k]) == k  # presentation index == position
    # Open-GOP keyframes have leading B-frames that need the previous group: never restart there.
    index, packets, _ = packet_index(videos["open_gop"][0])
    pts = np.array([p.pts for p in packets])
    keyframes = [k for k, p in enumerate(packets) if p.is_keyframe]
    with_leading = [k for k in keyframes if np.any(pts[k:] < pts[k])]
    assert with_leading and not set(with_leading) & set(index.restarts.tolist())


def test_untrustworthy_packets(videos):
    _, packets, frames = packet_index(videos["frames_zero"][0])
    assert frames == 0 and not PacketIndex.is_trustworthy(packets, frames)
    _, packets, frames = packet_index(videos["landscape"][0])
    assert not PacketIndex.is_trustworthy(packets[:-1], frames)


def test_plan_covers_wanted_frames(videos):
    index, _, _ = packet_index(videos["landscape"][0])
    wanted = np.array([0, 5, 7, 50, 51, 199, 199])
    plan = index.plan(wanted)
    restarts = set(index.restarts.tolist())
    assert all(start in restarts for start, _ in plan)
    assert all(a[1] < b[0] for a, b in zip(plan, plan[1:]))
    for i in wanted:
        assert any(start <= index.order[i] < stop for start, stop in plan)


@pytest.fixture
def decoded_packets(monkeypatch):
    """Counts the packets handed to the decoder."""
    counter = []
    original = decode._decode_packets

    def counting(codec_context, packets):
        counter.append(len(packets))
        return original(codec_context, packets)
    monkeypatch.setattr(decode, "_decode_packets", counting)
    return counter


def test_sparse_sampling_decodes_few_packets(videos, decoded_packets):
    path, reference = videos["landscape"]
    frames, _ = read_frames(path, 4, False)
    assert_frames(frames, reference, uniform_indices(200, 4))
    # 4 frames in 4 groups of 6 pictures: at most 24 packets instead of 200
    assert len(decoded_packets) == 4 and sum(decoded_packets) <= 24


def test_dense_sampling_decodes_up_to_the_last_needed_frame(videos, decoded_packets):
    path, reference = videos["portrait"]  # keyframes every 12 frames
    read_frames(path, 64, False)
    assert sum(decoded_packets) == 60 and len(decoded_packets) == 1


def test_frames_zero_decodes_sequentially(videos, decoded_packets):
    read_frames(videos["frames_zero"][0], 4, False)
    assert decoded_packets == [45]


def test_mismatch_falls_back_to_the_full_decode(videos, monkeypatch, decoded_packets):
    def mismatch(self, codec_context, wanted):
        raise decode._PlanMismatch("simulated")
    monkeypatch.setattr(PacketIndex, "decode", mismatch)
    path, reference = videos["landscape"]
    frames, _ = read_frames(path, 12, False)
    assert_frames(frames, reference, uniform_indices(200, 12))
    assert decoded_packets == [200]


@pytest.mark.parametrize("thread_type", ["AUTO", "SLICE", "FRAME", "NONE"])
def test_threading_does_not_change_frames(videos, thread_type):
    path, reference = videos["long"]
    frames, _ = read_frames(path, 12, False, thread_type=thread_type)
    assert_frames(frames, reference, uniform_indices(500, 12))
