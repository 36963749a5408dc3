"""The retrieval model in training: fp32 heads under autocast, the heads' gradients with several
processes, the tight head (CLIP4Clip's), parameters DDP would find unused, short videos."""
import pytest
import torch

import params
from modules.clip import build_clip
from modules.factory import create_model
from modules.retrieval import RetrievalModel
from tests.simulated_ranks import simulate_ranks
from tests.test_retrieval import make_batch
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_datasets import SCHEDULE


@pytest.fixture(scope="module")
def clip_state_dict():
    return make_tiny_clip_state_dict(layers=2, text_layers=4, seed=3)


def make_model(sd, sim_header):
    torch.manual_seed(0)
    model = RetrievalModel(build_clip(sd), sim_header=sim_header, cross_num_hidden_layers=2)
    model.init_heads_from_clip(sd)
    return model


def features(seed=0, B=4, f=3, D=64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, f, dtype=torch.long)
    mask[1, 2:] = 0
    return torch.randn(B, 1, D, generator=g), torch.randn(B, f, D, generator=g), mask


@pytest.mark.parametrize("sim_header", ["meanP", "seqTransf", "seqLSTM", "tightTransf"])
def test_heads_and_loss_run_in_fp32_under_autocast(clip_state_dict, sim_header):
    """As the original's custom_fwd(cast_inputs=float32): autocast must not reach the heads."""
    model = make_model(clip_state_dict, sim_header).eval()  # eval: no dropout, so both runs compare
    text, visual, mask = features()
    text.requires_grad_(True)
    loss = model.contrastive_loss(text, visual, mask)
    (grad,) = torch.autograd.grad(loss, text)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_loss = model.contrastive_loss(text, visual, mask)
        sim = model.similarity(text, visual, mask)
    (amp_grad,) = torch.autograd.grad(amp_loss, text)
    assert amp_loss.dtype == sim.dtype == torch.float32
    assert amp_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(amp_grad, grad, atol=1e-7, rtol=1e-5)


def small_batch(B=4, T=3, side=64):
    """make_batch's layout with 64-pixel frames (for a CLIP built at resolution 64)."""
    ids, input_mask, segment_ids, _, video_mask = make_batch(B=3, T=T)
    ids, input_mask, segment_ids, video_mask = (torch.cat([t, t[:B - 3]]) for t in (ids, input_mask, segment_ids, video_mask))
    video = torch.randn(B, 1, T, 3, side, side, generator=torch.Generator().manual_seed(8))
    return [ids, input_mask, segment_ids, video, video_mask]


@pytest.mark.parametrize("sim_header", ["seqLSTM", "seqTransf"])
def test_two_processes_give_the_original_gradients(sim_header, monkeypatch):
    """The original applies the head on each process, then gathers: with 2 processes every gradient
    except logit_scale's is half the one-process gradient of the whole batch (each rank's loss reaches
    only its own videos), the head's included. logit_scale acts after the gather: unchanged."""
    model = make_model(make_tiny_clip_state_dict(layers=2, text_layers=2, resolution=64), sim_header).train()
    batch = small_batch()  # 4 videos: 2 per rank
    model(*batch).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    _, averaged = simulate_ranks(model, batch, 2, monkeypatch)
    assert set(averaged) == set(whole)
    head = [n for n in whole if not n.startswith("clip.")]
    assert head
    for name, grad in whole.items():
        expected = grad if name == "clip.logit_scale" else grad / 2
        torch.testing.assert_close(averaged[name], expected, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("sim_header, extra", [("meanP", ()), ("seqTransf", ()), ("seqLSTM", ()), ("tightTransf", ()),
                                               ("meanP", ("--cluster_frame_embedding", "1"))])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, sim_header, extra):
    """What DistributedDataParallel(find_unused_parameters=False) needs. The parameters the forward
    never uses (tightTransf's logit_scale, seqLSTM's frame_position_embeddings, cluster_frame_embed)
    do not require a gradient: in the original they get none and never change either."""
    args = params.get_args(["--output_dir", str(tmp_path), "--max_frames", "4", "--sim_header", sim_header,
                            "--cluster_embedding", "1", *SCHEDULE, *extra])
    model = create_model(args, make_tiny_clip_state_dict(seed=1)).train()
    model(*make_batch()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {"tightTransf": {"clip.logit_scale"}, "seqLSTM": {"frame_position_embeddings.weight"}}.get(sim_header, set())
    if extra:
        expected = {"clip.visual.transformer.resblocks.6.tokencluster_inter.cluster_frame_embed"}
    assert frozen == expected


def test_tight_head_is_clip4clips(clip_state_dict):
    """Cross encoder from CLIP (position table, first text blocks), no token-type table, dropout 0.1
    on the embeddings in training only."""
    model = make_model(clip_state_dict, "tightTransf")
    state = model.state_dict()
    assert not [k for k in state if "token_type" in k]
    assert torch.equal(state["cross.embeddings.position_embeddings.weight"], clip_state_dict["positional_embedding"])
    for i in range(2):
        for name in ("attn.in_proj_weight", "attn.out_proj.bias", "mlp.c_proj.weight", "ln_1.weight"):
            assert torch.equal(state[f"cross.transformer.resblocks.{i}.{name}"],
                               clip_state_dict[f"transformer.resblocks.{i}.{name}"])
    assert model.cross.embeddings.dropout.p == 0.1
    text, visual, mask = features()
    with torch.no_grad():
        model.train()
        first, second = model.similarity(text, visual, mask), model.similarity(text, visual, mask)
        assert (first - second).abs().max() > 1e-4
        model.eval()
        assert torch.equal(model.similarity(text, visual, mask), model.similarity(text, visual, mask))


def test_short_video_keeps_its_segment(tmp_path):
    """FIX: one valid frame of 4 with segments of 2 frames: the first segment stays valid, so the video
    gets a unit embedding instead of the original's zero vector."""
    args = params.get_args(["--output_dir", str(tmp_path), "--max_frames", "4", *SCHEDULE])
    model = create_model(args, make_tiny_clip_state_dict(seed=1)).eval()
    ids, input_mask, segment_ids, video, video_mask = make_batch()
    video_mask[0, 0] = torch.tensor([1, 0, 0, 0])
    video[0, 0, 1:] = video[0, 0, :1]  # a short clip repeats its last frame, as the loaders do
    with torch.no_grad():
        visual, mask = model.encode_video(video, video_mask)
        embedding = model.video_embedding(visual, mask)
    assert mask[0].tolist() == [1, 0]
    assert embedding[0].norm().item() == pytest.approx(1.0, abs=1e-5)
