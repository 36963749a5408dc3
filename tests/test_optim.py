import math

import pytest
import torch

import params
from modules.factory import create_model
from modules.optim import BertAdam, build_optimizer, cosine_with_warmup, freeze_clip_layers, parameter_groups, \
    warmup_cosine
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_datasets import SCHEDULE


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    args = params.get_args(["--output_dir", str(tmp_path_factory.mktemp("o")), "--max_frames", "4",
                            "--sim_header", "seqTransf", "--cluster_embedding", "1", *SCHEDULE])
    return create_model(args, make_tiny_clip_state_dict(layers=12, text_layers=4)), args


def test_parameter_groups(model):
    model, args = model
    groups = parameter_groups(model, lr=1e-3, coef_lr=0.1, weight_decay=0.2, new_added_modules=args.new_added_modules)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == sum(1 for _ in model.parameters())
    clip_weight = by_name["clip.visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert (clip_weight["lr"], clip_weight["weight_decay"]) == (pytest.approx(1e-4), 0.2)
    assert by_name["clip.visual.ln_post.weight"]["weight_decay"] == 0.2  # CLIP's ln_* weights are decayed
    assert by_name["clip.visual.ln_post.bias"]["weight_decay"] == 0.0
    table = by_name["clip.visual.transformer.resblocks.6.tokencluster_inter.cluster_embed"]
    assert (table["lr"], table["weight_decay"]) == (1e-3, 0.2)  # a new module, at lr
    head = by_name["transformerClip.resblocks.0.attn.in_proj_weight"]
    assert head["lr"] == 1e-3 and by_name["frame_position_embeddings.weight"]["lr"] == 1e-3


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
    freeze_clip_layers(model.clip, 0, freeze_all=True)
    assert {n for n, p in model.clip.named_parameters() if p.requires_grad} == \
        {"visual.transformer.resblocks.6.tokencluster_inter.cluster_embed"}
    for p in model.parameters():
        p.requires_grad_(True)


def test_bert_adam_by_hand():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    start = w.detach().clone()
    opt = BertAdam([{"params": [w], "weight_decay": 0.1}], lr=0.5, warmup=0.25, t_total=4, b1=0.9, b2=0.98,
                   e=1e-6, max_grad_norm=1.0)
    grads = [torch.randn(3, 2) * 3 for _ in range(3)]
    m, v, p = torch.zeros(3, 2), torch.zeros(3, 2), start.clone()
    for step, g in enumerate(grads):
        w.grad = g.clone()
        opt.step()
        g = g * min(1.0, 1.0 / (g.norm().item() + 1e-6))  # each parameter's gradient clipped to norm 1
        m = 0.9 * m + 0.1 * g
        v = 0.98 * v + 0.02 * g * g
        update = m / (v.sqrt() + 1e-6) + 0.1 * p
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


def test_adamw_groups_follow_the_schedule(model):
    model, args = model
    optimizer, schedule = build_optimizer(model, "AdamW", 1e-3, 0.1, 0.2, (0.9, 0.98), 1e-6, 100, 0.1,
                                          args.new_added_modules)
    base = schedule.set_step(55)
    assert base == pytest.approx(0.5e-3)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.5e-4, 0.5e-3])
