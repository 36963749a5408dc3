"""Eval-only X-CLIP through main() on a released-format checkpoint, against the original's own
outputs: its validation pipeline and model on the committed tiny videos
(tests/reference/make_xclip_reference.py wrote eval.npz; 2x3 uses XCLIP_SPEC §3.3's deterministic clips)."""
import json
import os

import numpy as np
import pytest
import torch

import main as main_module
from tests.tiny_xclip import make_tiny_xclip_state_dict, write_released_checkpoint

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("xclip") / "k400_32_8.pth"
    write_released_checkpoint(str(path), make_tiny_xclip_state_dict(seed=0, num_frames=8))
    return path


def eval_flags(checkpoint, out, clips, crops, *extra):
    """The stable eval-only interface (XCLIP_SPEC §7)."""
    return ["--task_type", "recognition", "--do_train", "0", "--do_eval", "1", "--datatype", "video_list",
            "--val_list", os.path.join(REFERENCE, "val_list.txt"), "--features_path", REFERENCE,
            "--labels_csv", os.path.join(REFERENCE, "labels.csv"), "--pretrained_clip_name", "ViT-B/32",
            "--pretrained_dir", str(out / "no_clip_needed"), "--max_frames", "8", "--num_clips", str(clips),
            "--num_crops", str(crops), "--batch_size_val", "2", "--precision", "fp32", "--resume", str(checkpoint),
            "--output_dir", str(out), "--num_thread_reader", "0", *extra]


def reference_top_k(summed, labels):
    best = torch.from_numpy(summed).topk(5, dim=-1).indices
    hits = best == torch.from_numpy(labels)[:, None]
    return {"top1": float(hits[:, :1].any(1).float().mean() * 100), "top5": float(hits.any(1).float().mean() * 100)}


@pytest.mark.parametrize("clips, crops", [(1, 1), (1, 3), (2, 3)])
def test_eval_only_reproduces_the_original(checkpoint, tmp_path, clips, crops):
    main_module.main(eval_flags(checkpoint, tmp_path, clips, crops))
    reference = np.load(os.path.join(REFERENCE, "eval.npz"))
    case = f"{clips}x{crops}"
    scores = np.load(tmp_path / "scores.npy")
    assert scores.shape == (4, 6)  # videos in list order x classes
    # Measured difference ~2e-7 (the prompts' attention is fused here, step by step there).
    np.testing.assert_allclose(scores, reference[f"{case}/scores_mean"], atol=1e-4, rtol=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == reference_top_k(reference[f"{case}/scores_sum"], reference[f"{case}/labels"])


def test_checkpoint_with_other_frame_count_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="pass --max_frames 8"):
        main_module.main(eval_flags(checkpoint, tmp_path, 1, 1, "--max_frames", "16"))


def test_broken_videos_are_counted_and_scored(checkpoint, tmp_path):
    """A missing video becomes a blank clip that is scored and counted, never skipped."""
    listing = tmp_path / "list.txt"
    listing.write_text(open(os.path.join(REFERENCE, "val_list.txt")).read() + "videos/missing.mp4 3\n")
    flags = eval_flags(checkpoint, tmp_path, 1, 1)
    flags[flags.index("--val_list") + 1] = str(listing)
    main_module.main(flags)
    assert np.load(tmp_path / "scores.npy").shape == (5, 6)
    result = json.loads((tmp_path / "results.jsonl").read_text())
    assert result["broken_videos"] == 1
