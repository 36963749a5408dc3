import math

import pytest
import torch

import params
from modules.factory import create_model
from modules.optim import NEW_ADDED_MODULES, BertAdam, CosineSchedule, build_optimizer, cosine_with_warmup, \
    freeze_clip_layers, map_optimizer_state, parameter_groups, total_optimizer_steps, warmup_cosine
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_datasets import SCHEDULE


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    args = params.get_args(["--output_dir", str(tmp_path_factory.mktemp("o")), "--max_frames", "4",
                            "--sim_header", "seqTransf", "--cluster_embedding", "1", *SCHEDULE])
    return create_model(args, make_tiny_clip_state_dict(layers=12, text_layers=4)), args


def test_parameter_groups(model):
    model, args = model
    groups = parameter_groups(model, lr=1e-3, coef_lr=0.1, weight_decay=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == sum(1 for _ in model.parameters())
    # The original's order: CLIP decay, CLIP no decay, new decay, new no decay.
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(pytest.approx(1e-4), 0.2), (pytest.approx(1e-4), 0.0),
                                                              (1e-3, 0.2), (1e-3, 0.0)]
    clip_weight = by_name["clip.visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert (clip_weight["lr"], clip_weight["weight_decay"]) == (pytest.approx(1e-4), 0.2)
    assert by_name["clip.visual.ln_post.weight"]["weight_decay"] == 0.2  # CLIP's ln_* weights are decayed
    assert by_name["clip.visual.ln_post.bias"]["weight_decay"] == 0.0
    # Corrected: the cluster tables are CLIP parameters (not in new_added_modules): lr * coef_lr, as the original.
    table = by_name["clip.visual.transformer.resblocks.6.tokencluster_inter.cluster_embed"]
    assert (table["lr"], table["weight_decay"]) == (pytest.approx(1e-4), 0.2) and table is groups[0]
    assert "tokencluster_inter" not in NEW_ADDED_MODULES
    head = by_name["transformerClip.resblocks.0.attn.in_proj_weight"]
    assert head["lr"] == 1e-3 and by_name["frame_position_embeddings.weight"]["lr"] == 1e-3


def test_parameter_groups_keep_frozen_parameters_and_empty_groups(tmp_path):
    """As the original, so an original checkpoint's optimizer state lines up group by group."""
    args = params.get_args(["--output_dir", str(tmp_path), "--max_frames", "4"])
    model = create_model(args, make_tiny_clip_state_dict(layers=2, text_layers=2))  # meanP: no new modules
    freeze_clip_layers(model.clip, 0)
    groups = parameter_groups(model, lr=1e-3, coef_lr=0.1, weight_decay=0.2)
    assert [len(g["params"]) > 0 for g in groups] == [True, True, False, False]
    assert any(p is model.clip.visual.conv1.weight for p in groups[0]["params"])  # frozen, still listed


def test_freeze_layers(model):
    model, _ = model
    freeze_clip_layers(model.clip, 3)
    trainable = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    assert "visual.conv1.weight" not in trainable and "token_embedding.weight" not in trainable
    assert "visual.transformer.resblocks.2.mlp.c_fc.weight" not in trainable
    assert "visual.transformer.resblocks.3.mlp.c_fc.weight" in trainable
    assert "transformer.resblocks.2.ln_1.weight" not in trainable
    assert {"ln_final.weight", "text_projection", "logit_scale", "visual.ln_post.bias", "visual.proj"} <= trainable
    assert "visual.transformer.resblocks.6.tokencluster_inter.cluster_embed" in trainable
    freeze_clip_layers(model.clip, 7)  # corrected: the table of block 6 freezes with its block
    assert not model.clip.visual.transformer.resblocks[6].tokencluster_inter.cluster_embed.requires_grad
    assert model.clip.visual.transformer.resblocks[7].attn.in_proj_weight.requires_grad
    for p in model.parameters():
        p.requires_grad_(True)
    freeze_clip_layers(model.clip, 0, freeze_all=True)
    assert {n for n, p in model.clip.named_parameters() if p.requires_grad} == \
        {"visual.transformer.resblocks.6.tokencluster_inter.cluster_embed"}
    for p in model.parameters():
        p.requires_grad_(True)


@pytest.mark.parametrize("b1, b2, e", [(0.9, 0.98, 1e-6), (0.5, 0.7, 1e-3)])
def test_bert_adam_by_hand(b1, b2, e):
    """The flags' betas and eps are used (the original hard-codes 0.9, 0.98, 1e-6, their defaults)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    start = w.detach().clone()
    opt = BertAdam([{"params": [w], "weight_decay": 0.1}], lr=0.5, warmup=0.25, t_total=4, b1=b1, b2=b2,
                   e=e, max_grad_norm=1.0)
    grads = [torch.randn(3, 2) * 3 for _ in range(3)]
    m, v, p = torch.zeros(3, 2), torch.zeros(3, 2), start.clone()
    for step, g in enumerate(grads):
        w.grad = g.clone()
        opt.step()
        g = g * min(1.0, 1.0 / (g.norm().item() + 1e-6))  # each parameter's gradient clipped to norm 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = m / (v.sqrt() + e) + 0.1 * p
        x = step / 4
        factor = x / 0.25 if x < 0.25 else 0.5 * (1 + math.cos(math.pi * x))
        p = p - 0.5 * factor * update
        torch.testing.assert_close(w.detach(), p, atol=1e-6, rtol=1e-6)


def test_schedules():
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.5, 0.1) == pytest.approx(0.5)
    assert cosine_with_warmup(0, 100, 10, 1e-3) == pytest.approx(1e-8)
    assert cosine_with_warmup(5, 100, 10, 1e-3) == pytest.approx(1e-8 + (1e-3 - 1e-8) / 2)
    assert cosine_with_warmup(10, 100, 10, 1e-3) == pytest.approx(1e-3)
    assert cosine_with_warmup(55, 100, 10, 1e-3) == pytest.approx(0.5e-3)
    assert cosine_with_warmup(100, 100, 10, 1e-3) == pytest.approx(1e-8)
    # The original's warm-up: a float length, step <= length inclusive (not int(length), not <).
    assert cosine_with_warmup(2, 26 / 3, 2.6, 1e-3) == pytest.approx(2 / 2.6 * (1e-3 - 1e-8) + 1e-8, rel=1e-12)
    rest = (3 - 2.6) / (26 / 3 - 2.6)
    assert cosine_with_warmup(3, 26 / 3, 2.6, 1e-3) == pytest.approx(0.5e-3 * (1 + math.cos(rest * math.pi)), rel=1e-12)


def test_total_optimizer_steps_is_the_originals_formula():
    assert total_optimizer_steps(11, 3, 2) == pytest.approx(26 / 3, rel=1e-15)  # (11 + 2) / 3 * 2
    assert total_optimizer_steps(12, 3, 5) == pytest.approx(70 / 3) and total_optimizer_steps(10, 1, 4) == 40.0
    schedule = CosineSchedule(torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))]), 1e-3, 26 / 3, 0.3)
    assert schedule.warmup_steps == pytest.approx(2.6)


def test_adamw_groups_follow_the_schedule(model):
    model, args = model
    optimizer, schedule = build_optimizer(model, "AdamW", 1e-3, 0.1, 0.2, (0.9, 0.98), 1e-6, 100, 0.1)
    base = schedule.set_step(55)
    assert base == pytest.approx(0.5e-3)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.5e-4, 0.5e-3])


def test_own_optimizer_state_maps_back(model):
    """A checkpoint of this project resumes through the same function (lr_multiplier kept)."""
    model, _ = model
    optimizer, schedule = build_optimizer(model, "AdamW", 1e-3, 0.1, 0.2, (0.9, 0.98), 1e-6, 100, 0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    saved = optimizer.state_dict()
    fresh, schedule = build_optimizer(model, "AdamW", 1e-3, 0.1, 0.2, (0.9, 0.98), 1e-6, 100, 0.1)
    mapped, reason = map_optimizer_state(saved, fresh)
    assert reason is None
    fresh.load_state_dict(mapped)
    assert schedule.set_step(55) == pytest.approx(0.5e-3)
    assert [g["lr_multiplier"] for g in fresh.param_groups] == [0.1, 0.1, 1.0, 1.0]
    proj = model.clip.visual.proj
    assert torch.equal(fresh.state[proj]["exp_avg"], optimizer.state[proj]["exp_avg"])
    model.zero_grad(set_to_none=True)
