"""Training: exact gradient accumulation, resume, TensorBoard/results outputs, non-finite loss."""
import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module
import params
from modules import engine
from modules.accumulation import accumulated_backward
from modules.checkpoint import read_checkpoint
from modules.factory import create_model
from modules.precision import autocast_context, grad_scaler
from modules.tasks.retrieval import RetrievalTask
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_datasets import SCHEDULE, write_msvd, write_tiny_clip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_tiny_clip(str(root / "pretrained"))
    # 4 videos of 4-7 frames and --max_frames 4: TSN sampling is deterministic, so runs compare exactly.
    msvd = write_msvd(str(root / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    return root, msvd


def train_flags(root, msvd, out, *extra):
    return ["--output_dir", str(out), "--pretrained_dir", str(root / "pretrained"), "--max_words", "12",
            "--max_frames", "4", "--batch_size_val", "4", "--num_thread_reader", "0", "--do_train", "1",
            "--epochs", "1", "--batch_size", "4", "--lr", "1e-3", "--coef_lr", "0.5", "--optim", "AdamW",
            "--n_display", "1", "--freeze_layer_num", "-1", *msvd, *SCHEDULE, *extra]


def gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def random_batch(B, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, 1, 8, dtype=torch.long)
    ids[:, 0, 0], ids[:, 0, 1:4], ids[:, 0, 4] = 49406, torch.randint(1, 40000, (B, 3), generator=g), 49407
    video = torch.randn(B, 1, 4, 3, 224, 224, generator=g)
    mask = torch.ones(B, 1, 4, dtype=torch.long)
    mask[0, 0, 3:] = 0
    return [ids, (ids > 0).long(), torch.zeros_like(ids), video, mask]


@pytest.mark.parametrize("sim_header", ["meanP", "seqTransf"])
def test_accumulated_gradients_equal_one_large_batch(tmp_path, sim_header):
    args = params.get_args(["--output_dir", str(tmp_path), "--max_frames", "4", "--sim_header", sim_header,
                            "--cluster_embedding", "1", *SCHEDULE])
    model = create_model(args, make_tiny_clip_state_dict(seed=1)).train()
    batch = random_batch(6, seed=2)
    autocast, scaler = autocast_context("fp32", torch.device("cpu")), grad_scaler("fp32", torch.device("cpu"))
    model(*batch).backward()
    large = gradients(model)
    model.zero_grad(set_to_none=True)
    halves = [[t[:3] for t in batch], [t[3:] for t in batch]]
    accumulated_backward(model, halves, autocast, scaler)
    cached = gradients(model)
    assert set(cached) == set(large)
    for name in large:
        torch.testing.assert_close(cached[name], large[name], atol=1e-6, rtol=1e-4, msg=name)
    # The usual accumulation (summing the halves' losses) trains a smaller contrastive batch: not equal.
    model.zero_grad(set_to_none=True)
    for half in halves:
        (model(*half) / 2).backward()
    summed = gradients(model)
    assert max((summed[n] - large[n]).abs().max().item() for n in large) > 1e-3


def final_state(out):
    return read_checkpoint(os.path.join(out, "ckpt.pth.tar"))["state_dict"]


def assert_same_state(a, b, atol):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_accumulation_through_main_matches_one_batch(workspace, tmp_path):
    root, msvd = workspace
    main_module.main(train_flags(root, msvd, tmp_path / "one"))
    main_module.main(train_flags(root, msvd, tmp_path / "two", "--gradient_accumulation_steps", "2"))
    assert_same_state(final_state(tmp_path / "one"), final_state(tmp_path / "two"), atol=1e-5)


def test_resume_latest_continues_exactly(workspace, tmp_path, monkeypatch):
    root, msvd = workspace
    flags = train_flags(root, msvd, tmp_path / "full", "--epochs", "3")
    main_module.main(flags)
    interrupted = train_flags(root, msvd, tmp_path / "cut", "--epochs", "3")
    real_epoch = engine.train_one_epoch
    calls = []

    def crash_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)
    monkeypatch.setattr(engine, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main_module.main(interrupted)
    monkeypatch.setattr(engine, "train_one_epoch", real_epoch)
    assert read_checkpoint(str(tmp_path / "cut" / "ckpt.pth.tar"))["epoch"] == 1
    main_module.main(interrupted + ["--resume", "latest"])
    assert_same_state(final_state(tmp_path / "full"), final_state(tmp_path / "cut"), atol=1e-6)
    resumed = read_checkpoint(str(tmp_path / "cut" / "ckpt.pth.tar"))
    assert resumed["epoch"] == 3 and resumed["global_step"] == 3


def test_outputs_tensorboard_results_and_checkpoints(workspace, tmp_path):
    root, msvd = workspace
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--epochs", "2", "--batch_size", "2"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("train/sim_loss", "train/cluster_loss", "train/data_time", "train/batch_time", "train/scale",
                 "train/lr", "val/R1", "val/R5", "val/R10", "val/MR", "val/MeanR"):
        assert name in tags, name
    assert [e.step for e in events.Scalars("train/sim_loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/R1")] == [2, 4]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    checkpoint = read_checkpoint(str(out / "ckpt.pth.tar"))
    assert set(checkpoint) >= {"epoch", "global_step", "arch", "state_dict", "best_acc1", "optimizer", "hparams"}
    assert os.path.exists(out / "ckpt.best.pth.tar") and os.path.exists(out / "hparams_train.json")
    assert checkpoint["best_acc1"] == max(json.loads(line)["t2v"]["R1"] for line in lines)


def test_non_finite_loss_stops_without_overwriting(workspace, tmp_path, monkeypatch):
    root, msvd = workspace
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2"))
    good = (out / "ckpt.pth.tar").read_bytes()
    monkeypatch.setattr(RetrievalTask, "backward", staticmethod(lambda *a, **k: torch.tensor(float("nan"))))
    with pytest.raises(engine.NonFiniteLoss, match="global step 3 "):
        main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "2", "--resume", "latest"))
    assert (out / "ckpt.pth.tar").read_bytes() == good


@pytest.mark.parametrize("precision", ["amp", "fp16"])
def test_reduced_precision_trains_on_cpu(workspace, tmp_path, precision):
    root, msvd = workspace
    out = tmp_path / precision
    main_module.main(train_flags(root, msvd, out, "--precision", precision, "--batch_size", "2"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/sim_loss")]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    checkpoint = read_checkpoint(str(out / "ckpt.pth.tar"))
    expected = torch.float16 if precision == "fp16" else torch.float32
    assert checkpoint["state_dict"]["clip.visual.proj"].dtype == expected
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
