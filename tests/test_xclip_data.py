"""X-CLIP evaluation data against the original pipeline (decord + mmcv/OpenCV) and XCLIP_SPEC §3.

The reference numbers come from ``tests/reference/make_xclip_data_reference.py`` (run by hand on
the original code): per view of the committed tiny videos the SHA-256 of the float32 tensor, so
equality here is float32 bit-exactness; OpenCV resize results as hashes on seeded images.
"""
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch

from dataloaders.decode import decode_clip
from dataloaders.recognition_transforms import (crop_offsets, eval_crops, normalise_views,
                                                resize_scale, short_side_size)
from dataloaders.resize import resize_linear
from dataloaders.sampling import xclip_test_indices, xclip_train_indices, xclip_view_indices
from dataloaders.video_list import EvalViews, build_recognition_eval_loader
from tests import video_factory as vf

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")
with open(os.path.join(REFERENCE_DIR, "data_reference.json")) as _f:
    REFERENCE = json.load(_f)
SAMPLES = np.load(os.path.join(REFERENCE_DIR, "data_reference.npz"))
VIDEO_SIZES = [(340, 256), (256, 340), (320, 240), (400, 224)]  # the committed videos (w, h)


def sha256(array):
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.sha256(data.tobytes()).hexdigest()


# ---- sampling (XCLIP_SPEC §3.3) ----

def test_sampling_worked_examples():
    assert xclip_test_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert xclip_test_indices(30, 8).tolist() == [1, 5, 9, 13, 16, 20, 24, 28]
    assert xclip_train_indices(5, 8).tolist() == [0, 1, 1, 2, 2, 3, 4, 4]
    assert xclip_view_indices(30, 8, 2).tolist() == [0, 4, 8, 12, 15, 19, 23, 27,
                                                     2, 6, 10, 14, 17, 21, 25, 29]
    for rule in (lambda n: xclip_test_indices(n, 4), lambda n: xclip_train_indices(n, 4),
                 lambda n: xclip_view_indices(n, 4, 3)):
        got = rule(0)
        assert got.dtype == np.int64 and not got.any() and len(got) in (4, 12)


@pytest.mark.parametrize("t", [1, 3, 8, 16, 32])
@pytest.mark.parametrize("clips", [1, 2, 3, 4])
def test_view_rule_is_the_spec_formula_in_float64(t, clips):
    for n in list(range(1, 80)) + [299, 300, 301, 1001, 4097]:
        a = n / float(t)
        spec = [math.floor(k * a + (2 * j + 1) * a / (2 * clips)) % n
                for j in range(clips) for k in range(t)]
        got = xclip_view_indices(n, t, clips)
        assert got.tolist() == spec and got.dtype == np.int64
        if clips == 1:  # the original's test rule: (arange(T) * a + a / 2).astype(int), mod N
            original = np.mod((np.arange(t) * a + a / 2.0).astype(np.int64), n)
            assert np.array_equal(xclip_test_indices(n, t), original)
            assert np.array_equal(got, original)


@pytest.mark.parametrize("n,t", [(45, 8), (8, 8), (300, 16), (17, 8), (1000, 32)])
def test_train_rule_one_draw_per_segment_from_the_global_rng(n, t):
    np.random.seed(3)
    got = xclip_train_indices(n, t)
    np.random.seed(3)
    a = n // t
    assert np.array_equal(got, np.arange(t) * a + np.random.randint(a, size=t))
    assert all(k * a <= i < (k + 1) * a for k, i in enumerate(got))
    assert np.array_equal(xclip_train_indices(n, t, np.random.RandomState(5)),
                          np.arange(t) * a + np.random.RandomState(5).randint(a, size=t))


def test_train_rule_for_short_videos_is_deterministic_half_even():
    state = np.random.get_state()[1].copy()
    for n in range(1, 8):
        assert xclip_train_indices(n, 8).tolist() == [round(k * n / 8) % n for k in range(8)]
    assert np.array_equal(np.random.get_state()[1], state)  # no draw


# ---- OpenCV-exact resize and the evaluation transforms (XCLIP_SPEC §3.5) ----

def test_resize_equals_stored_opencv_results():
    cases = REFERENCE["resize_cases"]
    assert len(cases) > 300
    kinds = {"down": 0, "up": 0, "mixed": 0}
    for w, h, ow, oh, seed, digest in cases:
        image = np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)
        assert sha256(resize_linear(image, ow, oh)) == digest, (w, h, ow, oh)
        kinds["down" if ow <= w and oh <= h else "up" if ow >= w and oh >= h else "mixed"] += 1
    assert min(kinds.values()) > 30
    for w, h in VIDEO_SIZES:
        assert any(c[:2] == [w, h] and c[2:4] == list(short_side_size(h, w, 224)) for c in cases)


def test_resize_equals_live_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (it is optional): the stored "
                                            "cv2 results above still cover the resize")
    rng = np.random.RandomState(99)
    sizes = [(w, h, *short_side_size(h, w, s)) for w, h in VIDEO_SIZES for s in (224, 256, 336, 384)]
    sizes += [(int(w), int(h), int(ow), int(oh))
              for w, h, ow, oh in rng.randint(1, 500, size=(400, 4))]
    sizes += [(w, h, w // 2, h // 2) for w, h in rng.randint(2, 500, size=(20, 2))]
    for w, h, ow, oh in sizes:
        image = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
        expected = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_linear(image, ow, oh), expected), (w, h, ow, oh)


def test_resize_keeps_constant_images_and_sizes():
    image = np.full((37, 53, 3), 201, dtype=np.uint8)
    for ow, oh in [(1, 1), (20, 90), (200, 11), (53, 37)]:
        out = resize_linear(image, ow, oh)
        assert out.shape == (oh, ow, 3) and (out == 201).all()
    with pytest.raises(ValueError, match="uint8"):
        resize_linear(image.astype(np.float32), 10, 10)


def test_short_side_sizes_and_crop_offsets():
    assert resize_scale(224) == 256 and resize_scale(336) == 384
    assert short_side_size(256, 340, 224) == (298, 224)  # the spec's example: x = 0, 74, 37
    assert crop_offsets(224, 298, 224, 3) == [(0, 0), (0, 74), (0, 37)]
    assert short_side_size(340, 256, 224) == (224, 298)
    assert crop_offsets(298, 224, 224, 3) == [(0, 0), (74, 0), (37, 0)]
    assert crop_offsets(224, 224, 224, 3) == [(0, 0)] * 3
    assert short_side_size(240, 320, 256) == (341, 256)
    assert crop_offsets(256, 341, 224, 1) == [(16, 58)]
    assert short_side_size(256, 340, 256) == (340, 256)  # unchanged: no resampling


@pytest.mark.parametrize("num_crops", [0, 2, 5, 10])
def test_other_crop_counts_are_refused(num_crops):
    frame = np.zeros((256, 340, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="--num_crops"):
        eval_crops(frame, 224, num_crops)
    with pytest.raises(ValueError, match="--num_crops"):
        EvalViews(8, 1, num_crops, 224)


def test_normalisation_is_mmcv_subtract_then_multiply_by_the_inverse():
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 2, 2, 3))
    out = normalise_views(values)  # (256, 3, 2, 2)
    assert out.dtype == torch.float32 and out.shape == (256, 3, 2, 2)
    x = np.arange(256, dtype=np.float32)[:, None]
    mean = np.float32([123.675, 116.28, 103.53])
    inverse = (1.0 / np.float32([58.395, 57.12, 57.375]).astype(np.float64)).astype(np.float32)
    expected = (x - mean) * inverse  # (256, 3), float32 throughout
    assert np.array_equal(out[:, :, 1, 0].numpy(), expected)
    assert (expected != (x - mean) / np.float32([58.395, 57.12, 57.375])).sum() > 100


# ---- the original's pipeline on the committed videos ----

def test_pyav_decodes_like_decord():
    for video, info in REFERENCE["decord"].items():
        path = os.path.join(REFERENCE_DIR, video)
        frames = vf.decode_all_frames(path)
        assert vf.stream_frame_count(path) == len(frames) == info["frames"]
        assert list(frames[0].shape) == info["shape"] and sha256(np.stack(frames)) == info["sha256"]
        order = np.random.RandomState(1).permutation(len(frames))
        shuffled, count = decode_clip(path, lambda n: order)
        assert count == len(frames) and all(np.array_equal(shuffled[k], frames[i]) for k, i in enumerate(order))


@pytest.mark.parametrize("setting", sorted(REFERENCE["settings"]))
def test_views_equal_the_original_pipeline_bit_for_bit(setting):
    expected = REFERENCE["settings"][setting]
    clips, crops = expected["clips"], expected["crops"]
    loader, names = build_recognition_eval_loader(
        list_path=os.path.join(REFERENCE_DIR, "val_list.txt"), root=REFERENCE_DIR,
        labels_csv=os.path.join(REFERENCE_DIR, "labels.csv"), lmdb_path=None, num_frames=8,
        num_clips=clips, num_crops=crops, input_size=224, batch_size=3, num_workers=0)
    videos = list(expected["videos"].items())
    assert len(names) == 6 and [len(b[0]) for b in loader] == [3, 1]
    batches = [(video, label, valid) for batch in loader for video, label, valid in zip(*batch)]
    assert [int(label) for _, label, _ in batches] == [2, 0, 4, 1]
    for (video, _, valid), (name, reference) in zip(batches, videos):
        total = reference["total_frames"]
        assert xclip_view_indices(total, 8, clips).tolist() == reference["indices"]
        assert int(valid) == 1 and video.shape == (clips * crops, 8, 3, 224, 224)
        for v, view in enumerate(reference["views"]):
            sample = SAMPLES[f"{setting}/{name}"][v]
            got = video[v].numpy()
            assert sha256(got) == view["sha256"], (
                f"{name} view {v}: max |diff| on the stored sample "
                f"{np.abs(got.reshape(-1)[::REFERENCE['stride']] - sample).max()}")
    digests = [view["sha256"] for _, r in videos for view in r["views"]]
    assert len(set(digests)) == len(digests)  # every view differs: the hashes are not trivial
