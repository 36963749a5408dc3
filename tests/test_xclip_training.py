"""X-CLIP's training step and recipe (modules/xclip_train.py, the X-CLIP part of modules/optim.py,
modules/xclip_export.py, preprocess/export_xclip.py) against the original's outputs in
tests/reference/xclip/train_step.{json,npz}, written by tests/reference/make_xclip_train_reference.py
from the original code (its docstring says what each case holds)."""
import csv
import json
import os
import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from modules.checkpoint import read_checkpoint, save_checkpoint
from modules.optim import build_xclip_optimizer, logged_lr, map_optimizer_state, xclip_named_parameters, \
    xclip_parameter_groups
from modules.precision import grad_scaler
from modules.xclip import build_xclip_from_checkpoint, tokenize_class_names
from modules.xclip_train import MixupCutmix, freeze_text_tower, label_smoothing_cross_entropy, recognition_backward, \
    recognition_loss, smoothed_one_hot, soft_target_cross_entropy
from preprocess import export_xclip
from tests.tiny_xclip import REFERENCE_LABELS, make_tiny_xclip_state_dict, reference_video

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")
SMALL = dict(layers=2, text_layers=1, vocab=1000, resolution=64)  # a fast model where the numbers do not matter
# Gradients: |ours − original| <= GRAD_RTOL · max|original| per tensor. Float32 on the CPU; the forward
# differs from the original's only in rounding order (batch-first tensors, fused attention in the
# prompt generator, XCLIP_SPEC §1.4), and the differences grow through 12 blocks forward and back.
# Measured worst 3.7e-5 (prompts_generator.decoder.1.cross_attn.q_proj, the fused attention), 1-3e-6
# elsewhere; every gradient norm within 1e-5 relative.
GRAD_RTOL = 2e-4
NORM_RTOL = 1e-4
LOSS_ATOL = 1e-6  # measured 2.4e-7 .. 4.8e-7
SETTINGS = {"cutmix": dict(mixup=0.8, label_smooth=0.1), "mixup": dict(mixup=0.8, label_smooth=0.1),
            "label_smoothing": dict(mixup=0.0, label_smooth=0.1), "cross_entropy": dict(mixup=0.0, label_smooth=0.0)}


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(REFERENCE, "train_step.json")) as f:
        meta = json.load(f)
    return meta, np.load(os.path.join(REFERENCE, "train_step.npz"))


@pytest.fixture(scope="module")
def model():
    """The tiny X-CLIP of the reference, text tower frozen, in training mode."""
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=8), 8)
    freeze_text_tower(model)
    return model.train()


def small_model(frozen=True):
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=8, **SMALL), 8)
    if frozen:
        freeze_text_tower(model)
    return model


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def loss_for(settings):
    return recognition_loss(len(REFERENCE_LABELS), cutmix=1.0, switch_prob=0.5, **settings)


def assert_gradients_match(model, meta, arrays, case):
    named = dict(model.named_parameters())
    for name in meta["selected_gradients"]:
        expected = torch.from_numpy(arrays[f"{case}/grad/{name}"])
        atol = GRAD_RTOL * expected.abs().max().item()
        torch.testing.assert_close(named[name].grad, expected, atol=atol, rtol=0, msg=f"{case}: {name}")
    with_grad = [(n, p.grad) for n, p in xclip_named_parameters(model) if p.grad is not None]
    assert [n for n, _ in with_grad] == meta["cases"][case]["params_with_grad"]
    norms = np.array([g.double().norm().item() for _, g in with_grad])
    np.testing.assert_allclose(norms, arrays[f"{case}/grad_norms"], rtol=NORM_RTOL, atol=0)


def test_parameter_order_is_the_originals(reference):
    meta, _ = reference
    with open(os.path.join(REFERENCE, "keys_tiny.json")) as f:
        original_keys = list(json.load(f))  # the original's state_dict order
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=8), 8)
    assert [n for n, _ in xclip_named_parameters(model)] == original_keys
    assert [n for n, _ in model.named_parameters()] != original_keys  # so the sort is needed


def test_frozen_text_tower_and_groups_equal_the_originals(reference):
    meta, _ = reference
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=8), 8)
    frozen = freeze_text_tower(model)
    assert sorted(frozen) == sorted(meta["frozen"]) and len(frozen) == 150
    assert [n for n, p in xclip_named_parameters(model) if p.requires_grad] == meta["trainable"]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = xclip_parameter_groups(model, 8e-6, 0.001)
    assert [[names[id(p)] for p in g["params"]] for g in groups] == [g["names"] for g in meta["groups"]]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(g["lr"], g["weight_decay"]) for g in meta["groups"]]
    optimizer, _ = build_xclip_optimizer(model, lr=8e-6, weight_decay=0.001, epochs=30, warmup_epochs=5,
                                         micro_batches_per_epoch=10, accumulation=1)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert list(optimizer.defaults["betas"]) == meta["betas"] and optimizer.defaults["eps"] == meta["eps"]


@pytest.mark.parametrize("case", ["cutmix", "mixup"])
def test_blending_draws_and_batch_equal_the_originals(case, reference):
    meta, arrays = reference
    record = meta["cases"][case]
    video, labels = reference_video(31, 4, 8), torch.tensor(record["labels"])
    blend = MixupCutmix(len(REFERENCE_LABELS))
    seed_all(record["seed"])
    draws = blend.draw(4, 224, 224)
    assert draws.kind == record["branch"] and draws.permutation.tolist() == record["permutation"]
    assert draws.lam.dtype == torch.float32 and draws.lam.item() == record["lam"]
    assert draws.box == (tuple(record["box"]) if case == "cutmix" else None)
    seed_all(record["seed"])
    mixed, targets = blend(video, labels)
    torch.testing.assert_close(targets, torch.from_numpy(arrays[f"{case}/targets"]), atol=0, rtol=0)
    flat = mixed.double().flatten(1)
    sums = torch.stack([flat.sum(1), flat.pow(2).sum(1)], 1).numpy()
    np.testing.assert_array_equal(sums, arrays[f"{case}/video_sum_sumsq"])  # the same frames, bit for bit
    assert torch.equal(video, reference_video(31, 4, 8))  # the input is left as it was


@pytest.mark.parametrize("case", list(SETTINGS))
def test_training_step_equals_the_originals(case, model, reference):
    meta, arrays = reference
    record = meta["cases"][case]
    loss_fn = loss_for(SETTINGS[case])
    assert loss_fn.kind == {"cutmix": "mixup_soft_target", "mixup": "mixup_soft_target"}.get(case, case)
    model.zero_grad(set_to_none=True)
    seed_all(record["seed"])
    video, targets = loss_fn.prepare(reference_video(31, 4, 8), torch.tensor(record["labels"]))
    logits = model(video, tokenize_class_names(REFERENCE_LABELS))
    loss = loss_fn(logits, targets)
    loss.backward()
    assert abs(loss.item() - record["loss"]) <= LOSS_ATOL
    assert_gradients_match(model, meta, arrays, case)


def test_accumulated_step_equals_the_originals_train_one_epoch(model, reference):
    meta, arrays = reference
    record = meta["cases"]["accumulated"]
    video, labels = reference_video(31, 4, 8), torch.tensor(record["labels"])
    micro_batches = [(video[:2], labels[:2]), (video[2:], labels[2:])]
    model.zero_grad(set_to_none=True)
    seed_all(record["seed"])
    loss = recognition_backward(model, micro_batches, tokenize_class_names(REFERENCE_LABELS),
                                loss_for(SETTINGS["mixup"]), accumulation=2, autocast=nullcontext,
                                scaler=grad_scaler("fp32", torch.device("cpu")))
    assert [b["branch"] for b in record["micro_batches"]] == ["cutmix", "mixup"]  # both branches in one step
    assert abs(loss.item() - record["loss"]) <= LOSS_ATOL
    assert_gradients_match(model, meta, arrays, "accumulated")


def test_a_partial_accumulation_group_is_refused():
    with pytest.raises(ValueError, match="leftover micro-batches must be dropped"):
        recognition_backward(small_model(), [(torch.zeros(1), torch.zeros(1))], None, loss_for(SETTINGS["mixup"]),
                             accumulation=2, autocast=nullcontext, scaler=None)


@pytest.mark.parametrize("run", ["i10_a3_e2_w0.5", "i10_a1_e2_w0.5", "i11_a2_e3_w0", "i7_a2_e2_w1.3"])
def test_learning_rates_equal_the_originals_at_every_step(run, reference):
    meta, _ = reference
    spec = meta["lr_runs"][run]
    optimizer, schedule = build_xclip_optimizer(
        small_model(), lr=spec["lr"], weight_decay=0.001, epochs=spec["epochs"], warmup_epochs=spec["warmup_epochs"],
        micro_batches_per_epoch=spec["micro_batches_per_epoch"], accumulation=spec["accumulation"])
    steps = spec["epochs"] * (spec["micro_batches_per_epoch"] // spec["accumulation"])
    assert len(spec["step_lrs"]) == steps  # leftover micro-batches never make a step
    for step, expected in enumerate(spec["step_lrs"]):
        schedule.set_step(step)
        ours = [group["lr"] for group in optimizer.param_groups]
        assert ours == pytest.approx(expected, rel=1e-12, abs=0), f"step {step}"
        assert logged_lr(optimizer) == ours[0]
        assert schedule.micro_batch_index(step) == spec["step_update_args"][step]
    assert max(max(lrs) for lrs in spec["step_lrs"]) > 0 and spec["step_lrs"][-1][0] > 8e-8


def test_schedule_state_is_timms(reference):
    meta, _ = reference
    _, schedule = build_xclip_optimizer(small_model(), lr=8e-6, weight_decay=0.001, epochs=2, warmup_epochs=0.5,
                                        micro_batches_per_epoch=10, accumulation=3)
    assert schedule.state_dict() == meta["scheduler_state"]


def test_schedule_refuses_an_epoch_shorter_than_one_step():
    with pytest.raises(ValueError, match="no optimizer step would ever run"):
        build_xclip_optimizer(small_model(), lr=1e-5, weight_decay=0.0, epochs=1, warmup_epochs=0,
                              micro_batches_per_epoch=2, accumulation=3)


def log_softmax_np(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_losses_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 7, generator=g) * 3, torch.tensor([0, 6, 2, 2, 5])
    log_p = log_softmax_np(logits.double().numpy())
    nll, uniform = -log_p[np.arange(5), labels.numpy()], -log_p.mean(axis=1)
    expected = (0.9 * nll + 0.1 * uniform).mean()
    assert label_smoothing_cross_entropy(logits, labels, 0.1).item() == pytest.approx(expected, rel=1e-6)
    targets = torch.softmax(torch.randn(5, 7, generator=g), dim=-1)
    expected = -(targets.double().numpy() * log_p).sum(axis=1).mean()
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    smooth = smoothed_one_hot(labels, 7, 0.1)
    assert smooth[0, 0].item() == pytest.approx(0.9 + 0.1 / 7) and smooth[0, 1].item() == pytest.approx(0.1 / 7)
    torch.testing.assert_close(smooth.sum(1), torch.ones(5))
    assert loss_for(SETTINGS["cross_entropy"])(logits, labels).item() == pytest.approx(nll.mean(), rel=1e-6)


def test_loss_choice_and_its_errors():
    assert loss_for(dict(mixup=0.8, label_smooth=0.0)).blend.smoothing == 0.0  # mixup wins over smoothing 0
    assert loss_for(dict(mixup=0.0, label_smooth=0.2)).smoothing == 0.2
    with pytest.raises(ValueError, match="--cutmix 0"):
        recognition_loss(6, mixup=0.8, cutmix=0, switch_prob=0.5, label_smooth=0.1)
    with pytest.raises(ValueError, match="--label_smooth"):
        recognition_loss(6, mixup=0.0, cutmix=1.0, switch_prob=0.5, label_smooth=1.0)


def test_cutmix_on_non_square_frames_pastes_one_box_into_every_frame():
    """Width and height kept apart (the reference frames are square): the box is drawn in the
    original's order, x from the width and y from the height, and pasted into every frame."""
    video = torch.randn(3, 2, 3, 16, 40, generator=torch.Generator().manual_seed(1))  # (B, T, 3, H=16, W=40)
    blend = MixupCutmix(4, switch_prob=1.0)
    seed_all(5)
    mixed, targets = blend(video, torch.tensor([0, 1, 3]))
    seed_all(5)
    np.random.rand()
    permutation = torch.randperm(3)
    cut = torch.sqrt(1.0 - torch.distributions.Beta(1.0, 1.0).sample())
    cx, cy = int(torch.randint(40, (1,))), int(torch.randint(16, (1,)))
    w, h = int(40 * cut), int(16 * cut)
    x1, x2, y1, y2 = max(cx - w // 2, 0), min(cx + w // 2, 40), max(cy - h // 2, 0), min(cy + h // 2, 16)
    expected = video.clone()
    expected[..., y1:y2, x1:x2] = video[permutation][..., y1:y2, x1:x2]
    assert (x2 - x1) * (y2 - y1) > 0 and not torch.equal(permutation, torch.arange(3))
    torch.testing.assert_close(mixed, expected, atol=0, rtol=0)
    lam = 1 - (x2 - x1) * (y2 - y1) / (40 * 16)
    soft = smoothed_one_hot(torch.tensor([0, 1, 3]), 4, 0.1)
    torch.testing.assert_close(targets, lam * soft + (1 - lam) * soft[permutation])


def write_labels(path, names):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "name"])
        writer.writerows(enumerate(names))


def training_checkpoint(tmp_path):
    """A recognition checkpoint as the engine writes it, after one optimizer step."""
    model = small_model()
    optimizer, schedule = build_xclip_optimizer(model, lr=8e-6, weight_decay=0.001, epochs=2, warmup_epochs=0.5,
                                                micro_batches_per_epoch=10, accumulation=3)
    video = reference_video(3, 2, 8, size=64)
    text_ids = torch.tensor([[1, 7, 999, 0], [1, 8, 9, 999], [1, 999, 0, 0]])  # (K, 4): ids below SMALL's vocab,
    text_ids = torch.nn.functional.pad(text_ids, (0, 73))  # (K, 77), the largest id (999) ends each name
    schedule.set_step(2)
    model(video, text_ids).logsumexp(dim=-1).mean().backward()
    optimizer.step()
    write_labels(tmp_path / "labels.csv", ["a", "b", "c"])
    hparams = {"lr": 8e-6, "wd": 0.001, "epochs": 2, "warmup_epochs": 0.5, "gradient_accumulation_steps": 3,
               "precision": "amp", "fix_text": 1, "max_frames": 8, "batch_size": 4, "seed": 7, "mixup": 0.8,
               "labels_csv": str(tmp_path / "labels.csv"), "output_dir": "/runs/k400", "xclip_config": None}
    checkpoint = {"epoch": 2, "global_step": 6, "arch": "xclip", "state_dict": model.state_dict(), "best_acc1": 61.5,
                  "optimizer": optimizer.state_dict(), "hparams": hparams}
    save_checkpoint(checkpoint, str(tmp_path / "ckpt.pth.tar"))
    return model, schedule, video, text_ids


def test_export_writes_the_released_format_and_loads_back(tmp_path):
    model, schedule, video, text_ids = training_checkpoint(tmp_path)
    out = str(tmp_path / "zoo" / "released.pth")  # the folder is made
    assert export_xclip.main(["--checkpoint", str(tmp_path / "ckpt.pth.tar"), "--out", out,
                              "--micro_batches_per_epoch", "10"]) == 0
    released = read_checkpoint(out)  # safe load, verified against the .sha256 sidecar
    assert set(released) == {"model", "optimizer", "lr_scheduler", "max_accuracy", "epoch", "config"}
    assert released["epoch"] == 1 and released["max_accuracy"] == 61.5
    assert list(released["model"]) == [n for n, _ in xclip_named_parameters(model)]  # the original's order
    assert released["lr_scheduler"] == schedule.state_dict()
    config = released["config"]
    assert type(config) is dict and type(config["TRAIN"]) is dict  # plain dicts, not yacs CfgNodes
    assert config["TRAIN"] == {**config["TRAIN"], "LR": 8e-6, "EPOCHS": 2, "WARMUP_EPOCHS": 0.5,
                               "ACCUMULATION_STEPS": 3, "OPT_LEVEL": "O1", "BATCH_SIZE": 4}
    assert config["MODEL"]["FIX_TEXT"] is True and config["DATA"]["NUM_CLASSES"] == 3
    assert (config["OUTPUT"], config["LOCAL_RANK"], config["SEED"], config["AUG"]["MIXUP"]) == ("/runs/k400", 0, 7, 0.8)
    fresh, _ = build_xclip_optimizer(small_model(), lr=8e-6, weight_decay=0.001, epochs=2, warmup_epochs=0.5,
                                     micro_batches_per_epoch=10, accumulation=3)
    state, reason = map_optimizer_state(released["optimizer"], fresh)  # what --resume does with it
    assert reason is None and len(state["param_groups"]) == 8
    again = build_xclip_from_checkpoint(read_checkpoint(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(video, text_ids), model.eval()(video, text_ids), atol=0, rtol=0)


def test_export_without_the_loader_length_writes_no_scheduler(tmp_path):
    training_checkpoint(tmp_path)
    out = str(tmp_path / "released.pth")
    released = export_xclip.export(str(tmp_path / "ckpt.pth.tar"), out)
    assert released["lr_scheduler"] is None and len(released["optimizer"]["param_groups"]) == 8


def test_export_refuses_what_is_not_an_xclip_training_checkpoint(tmp_path, capsys):
    path = str(tmp_path / "clip.pth.tar")
    save_checkpoint({"state_dict": {"clip.visual.proj": torch.zeros(2, 2)}, "epoch": 1}, path)
    with pytest.raises(SystemExit):
        export_xclip.main(["--checkpoint", path, "--out", str(tmp_path / "out.pth")])
    assert "not an X-CLIP state dict" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out.pth")
