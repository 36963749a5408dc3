"""Training through main() as the original trains: the schedule's length and warm-up under
accumulation, the logged train/lr and train/scale, ckpt.best on a tie, --init_model before
--temperature_new, resuming from an original checkpoint, --freeze_clip with nothing left to train."""
import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module
import params
from modules.checkpoint import read_checkpoint, save_checkpoint
from modules.factory import build_retrieval_model
from tests.test_train import train_flags
from tests.tiny_datasets import save_released_checkpoint, write_msvd, write_tiny_clip

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "centerclip")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("as_original")
    write_tiny_clip(str(root / "pretrained"))
    msvd = write_msvd(str(root / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    return root, msvd


def scalars(out, tag):
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_adamw_schedule_under_accumulation_logs_the_originals_lr(tmp_path):
    """11 batches of one sample, accumulation 3, 2 epochs: the original's schedule is 8.67 steps long
    with a warm-up of 2.6 steps; its first steps' logged lr (tests/reference/centerclip/schedules.json)."""
    reference = json.load(open(os.path.join(REFERENCE, "schedules.json")))
    write_tiny_clip(str(tmp_path / "pretrained"))
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1,) * 11, frames=4)
    out = tmp_path / "run"
    main_module.main(train_flags(tmp_path, msvd, out, "--batch_size", "3", "--gradient_accumulation_steps", "3",
                                 "--epochs", "2", "--lr", str(reference["lr"]), "--coef_lr",
                                 str(reference["coef_lr"]), "--warmup_proportion",
                                 str(reference["warmup_proportion"]), "--wd", "0.2"))
    logged = [value for _, value in scalars(out, "train/lr")]
    # The original steps 3 times per epoch (it drops the 2 leftover micro-batches); ours 4, so the
    # epochs line up only in the first epoch's first 3 steps.
    assert logged[:3] == pytest.approx(reference["AdamW"]["logged_lr"][:3], rel=1e-6)
    assert len(logged) == 8


def test_scale_is_the_raw_logit_scale_and_a_tie_keeps_the_later_epoch(workspace, tmp_path):
    root, msvd = workspace
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "2", "--lr", "1e-12"))
    checkpoint = read_checkpoint(str(out / "ckpt.pth.tar"))
    assert scalars(out, "train/scale")[-1][1] == pytest.approx(checkpoint["state_dict"]["clip.logit_scale"].item(),
                                                               rel=1e-6)
    results = [json.loads(line)["t2v"]["R1"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert results[0] == results[1]  # lr 1e-12: the same metrics twice
    assert read_checkpoint(str(out / "ckpt.best.pth.tar"))["epoch"] == 2


def test_init_model_loads_what_matches_then_temperature_new_applies(workspace, tmp_path):
    root, msvd = workspace
    first = tmp_path / "first"
    main_module.main(train_flags(root, msvd, first, "--batch_size", "2"))
    state = read_checkpoint(str(first / "ckpt.pth.tar"))["state_dict"]
    state["clip.logit_scale"] = torch.tensor(3.0)
    state["head_of_another_model.weight"] = torch.zeros(3)
    del state["clip.ln_final.bias"]
    save_checkpoint({"state_dict": state}, str(tmp_path / "init.pth"))
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--init_model", str(tmp_path / "init.pth"),
                                 "--temperature_new", "50", "--lr", "1e-12"))
    log = (out / "log.txt").read_text()
    assert "head_of_another_model.weight" in log and "clip.ln_final.bias" in log
    trained = read_checkpoint(str(out / "ckpt.pth.tar"))["state_dict"]
    assert trained["clip.logit_scale"].item() == pytest.approx(4.6052)  # 50, clamped after the step
    torch.testing.assert_close(trained["clip.visual.proj"], state["clip.visual.proj"], atol=1e-6, rtol=0)


def test_training_resumes_from_an_original_checkpoint(workspace, tmp_path):
    """The original's file: `module.` keys, position_ids, an optimizer entry of another layout."""
    root, msvd = workspace
    first = tmp_path / "first"
    main_module.main(train_flags(root, msvd, first, "--batch_size", "2"))
    args = params.get_args(train_flags(root, msvd, first, "--batch_size", "2", "--resume",
                                       str(first / "ckpt.pth.tar")))
    model, _ = build_retrieval_model(args)
    save_released_checkpoint(model, str(tmp_path / "original.pth.tar"))
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "6", "--resume",
                                 str(tmp_path / "original.pth.tar")))
    log = (out / "log.txt").read_text()
    assert "optimizer state of" in log and "not resumed" in log
    assert read_checkpoint(str(out / "ckpt.pth.tar"))["epoch"] == 6  # the original file was saved at epoch 5


def test_freeze_clip_with_nothing_to_train_fails_at_start(workspace, tmp_path):
    root, msvd = workspace
    with pytest.raises(ValueError, match="--freeze_clip 1 freezes all of CLIP"):
        main_module.main(train_flags(root, msvd, tmp_path / "run", "--batch_size", "2", "--freeze_clip", "1",
                                     "--cluster_inter", "0"))
