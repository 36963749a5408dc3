"""Evaluation as the original runs it: fp32 whatever --precision says, and --do_eval 1 with
--do_train 1 evaluates once and stops."""
import os

import numpy as np
import pytest

import main as main_module
from tests.test_main_eval import common_flags, trained_checkpoint
from tests.tiny_datasets import SCHEDULE, write_msrvtt, write_tiny_clip


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    clip_sd = write_tiny_clip(str(root / "pretrained"))
    msrvtt = write_msrvtt(str(root / "msrvtt"))
    flags = common_flags(root, root / "unused") + msrvtt + SCHEDULE + ["--sim_header", "seqTransf"]
    trained_checkpoint({k: v.float() for k, v in clip_sd.items()}, flags, root / "ckpt.pth.tar")
    return root, msrvtt


def run_eval(root, msrvtt, out, *extra):
    flags = common_flags(root, out) + msrvtt + SCHEDULE + ["--sim_header", "seqTransf", "--resume",
                                                           str(root / "ckpt.pth.tar"), *extra]
    main_module.main(flags)
    return np.load(out / "sim_matrix.npy")


def test_evaluation_under_amp_is_fp32(released, tmp_path):
    """Autocast (bf16 on CPU) would round the encoders and create ties; the original has none."""
    root, msrvtt = released
    fp32 = run_eval(root, msrvtt, tmp_path / "fp32", "--precision", "fp32")
    amp = run_eval(root, msrvtt, tmp_path / "amp", "--precision", "amp")
    np.testing.assert_array_equal(amp, fp32)


def test_do_eval_with_do_train_evaluates_once_and_stops(released, tmp_path):
    root, msrvtt = released
    out = tmp_path / "both"
    both = run_eval(root, msrvtt, out, "--do_train", "1", "--epochs", "1", "--batch_size", "2")
    np.testing.assert_array_equal(both, run_eval(root, msrvtt, tmp_path / "eval"))
    assert not os.path.exists(out / "ckpt.pth.tar") and not os.path.exists(out / "tensorboard")
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
