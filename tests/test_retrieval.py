import pytest
import torch

from modules.clip import build_clip
from modules.retrieval import RetrievalModel
from tests.reference_clip import layer_norm, reference_block, reference_image, reference_text
from tests.tiny_clip import make_tiny_clip_state_dict

LAYERS = 2


@pytest.fixture(scope="module")
def clip_state_dict():
    return make_tiny_clip_state_dict(layers=LAYERS, text_layers=4, seed=3)


def make_model(sd, sim_header):
    torch.manual_seed(0)
    model = RetrievalModel(build_clip(sd), sim_header=sim_header, cross_num_hidden_layers=2)
    model.init_heads_from_clip(sd)
    return model.eval()


def make_batch(B=3, T=4, Lw=8):
    g = torch.Generator().manual_seed(5)
    ids = torch.zeros(B, 1, Lw, dtype=torch.long)
    for b in range(B):
        n = 2 + b
        ids[b, 0, :n] = torch.randint(1, 49000, (n,), generator=g)
        ids[b, 0, 0], ids[b, 0, n] = 49406, 49407
    video = torch.randn(B, 1, T, 3, 224, 224, generator=g)
    mask = torch.ones(B, 1, T, dtype=torch.long)
    mask[1, 0, 2:] = 0
    mask[2, 0, :] = 0  # a broken video: everything masked
    return ids, (ids > 0).long(), torch.zeros_like(ids), video, mask


def normalize(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def reference_pool(frames, mask):
    """frames [B, T, D], mask [B, T]: normalise, masked mean (count 0 -> 1), normalise."""
    out = []
    for b in range(frames.shape[0]):
        valid = [normalize(frames[b, t]) for t in range(frames.shape[1]) if mask[b, t]]
        mean = sum(valid) / max(len(valid), 1) if valid else torch.zeros(frames.shape[-1])
        out.append(normalize(mean))
    return torch.stack(out)


def reference_features(sd, batch):
    ids, _, _, video, mask = batch
    B, T = mask.shape[0], mask.shape[-1]
    text = normalize(reference_text(sd, ids[:, 0], layers=4))
    frames = reference_image(sd, video.reshape(-1, 3, 224, 224), layers=LAYERS).view(B, T, -1)
    return text, frames, mask[:, 0]


@pytest.mark.parametrize("sim_header", ["meanP", "seqTransf", "seqLSTM", "tightTransf"])
def test_heads_match_plain_references(clip_state_dict, sim_header):
    model = make_model(clip_state_dict, sim_header)
    batch = make_batch()
    ids, _, _, video, mask = batch
    text, frames, m = reference_features(clip_state_dict, batch)
    scale = clip_state_dict["logit_scale"].exp()
    if sim_header == "meanP":
        expected = scale * text @ reference_pool(frames, m).T
    elif sim_header == "seqTransf":
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        x = frames + sd["frame_position_embeddings.weight"][:frames.shape[1]]
        additive = ((1 - m.float()) * -1e6)[:, None, :].expand(-1, m.shape[1], -1)
        for i in range(2):
            x = reference_block(x, sd, f"transformerClip.resblocks.{i}.", heads=1, additive_mask=additive)
        expected = scale * text @ reference_pool(x + frames, m).T
    elif sim_header == "seqLSTM":
        rows = []
        for b in range(frames.shape[0]):
            n = max(int(m[b].sum()), 1)
            out, _ = model.lstm_visual(frames[b:b + 1, :n])
            padded = torch.cat([out[0], torch.zeros(frames.shape[1] - n, frames.shape[2])])
            rows.append(padded + frames[b])
        expected = scale * text @ reference_pool(torch.stack(rows), m).T
    else:
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        raw_text = reference_text(clip_state_dict, ids[:, 0], layers=4)
        expected = torch.zeros(3, 3)
        for i in range(3):
            for j in range(3):
                x = torch.cat([raw_text[i:i + 1], frames[j]])[None]  # (1, 1 + T, D)
                x = x + sd["cross.embeddings.position_embeddings.weight"][:x.shape[1]]  # no token-type table
                keep = torch.cat([torch.ones(1), m[j].float()])
                additive = ((1 - keep) * -1e6)[None, None, :].expand(1, x.shape[1], -1)
                for k in range(2):
                    x = reference_block(x, sd, f"cross.transformer.resblocks.{k}.", heads=1, additive_mask=additive)
                pooled = layer_norm(x, sd, "cross.pooler.ln_pool")[0, 0]
                pooled = pooled @ sd["cross.pooler.dense.weight"].T + sd["cross.pooler.dense.bias"]
                pooled = pooled * torch.sigmoid(1.702 * pooled)
                expected[i, j] = pooled @ sd["similarity_dense.weight"][0] + sd["similarity_dense.bias"][0]
    with torch.no_grad():
        visual, vmask = model.encode_video(video, mask)
        logits = model.similarity(model.encode_text(ids), visual, vmask)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-5)


def test_seq_heads_initialised_from_clip(clip_state_dict):
    model = make_model(clip_state_dict, "seqTransf")
    assert torch.equal(model.frame_position_embeddings.weight, clip_state_dict["positional_embedding"])
    for i in range(2):
        for name in ("attn.in_proj_weight", "mlp.c_fc.bias", "ln_2.weight"):
            assert torch.equal(model.state_dict()[f"transformerClip.resblocks.{i}.{name}"],
                               clip_state_dict[f"transformer.resblocks.{i}.{name}"])
    keys = set(model.state_dict())
    assert not any(k.startswith("transformerClip.resblocks.2.") for k in keys)


def test_training_loss_is_symmetric_infonce(clip_state_dict):
    model = make_model(clip_state_dict, "meanP").train()
    batch = make_batch()
    loss = model(*batch)
    text, frames, m = reference_features(clip_state_dict, batch)
    logits = clip_state_dict["logit_scale"].exp() * text @ reference_pool(frames, m).T
    expected = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
                + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()
    assert model.clip.logit_scale.grad is not None and torch.isfinite(model.clip.visual.proj.grad).all()
