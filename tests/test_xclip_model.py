"""X-CLIP model (modules/xclip.py): layout and numbers against the original's reference outputs
(tests/reference/xclip, written by tests/reference/make_xclip_reference.py), initialisation from
CLIP, the keyed text cache, and the errors a user can run into."""
import json
import math
import os

import numpy as np
import pytest
import torch

from modules.clip import CLIP, MODEL_CONFIGS
from modules.xclip import XCLIP, XCLIPConfig, build_xclip, build_xclip_from_checkpoint, tokenize_class_names
from modules.xclip_parts import DropPath
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_xclip import REFERENCE_CASES, REFERENCE_LABELS, make_tiny_xclip_state_dict, reference_video, \
    xclip_part_shapes

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")
# Float32 on the CPU. Every tensor but the prompt generator's output matches the original bit for
# bit; its cross-attention uses scaled_dot_product_attention where the original multiplies and
# softmaxes explicitly, a different rounding order (measured max 7e-7 on outputs of size ~1.5).
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(REFERENCE, "model.npz"))


@pytest.fixture(scope="module")
def tiny_models():
    return {T: build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=T), T).eval() for T in (4, 8)}


def key_shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def read_keys(name):
    with open(os.path.join(REFERENCE, name)) as f:
        return json.load(f)


def test_keys_and_shapes_equal_the_originals_for_vit_b32():
    with torch.device("meta"):  # layout only, no memory
        model = XCLIP(XCLIPConfig(MODEL_CONFIGS["ViT-B/32"], num_frames=8))
        clip = CLIP(MODEL_CONFIGS["ViT-B/32"])
    ours = key_shapes(model)
    assert ours == read_keys("keys_vit_b32.json")
    parts = xclip_part_shapes(768, 12, 512, 8)  # the 141 new keys as XCLIP_SPEC §1.7 lists them
    assert {k: tuple(ours[k]) for k in parts} == parts and len(parts) == 141
    assert {k: v for k, v in ours.items() if k not in parts} == key_shapes(clip)  # 302 CLIP keys
    assert len(ours) == 443


def test_keys_and_shapes_equal_the_originals_for_the_tiny_model(tiny_models):
    assert key_shapes(tiny_models[8]) == read_keys("keys_tiny.json")
    assert list(tiny_models[8].buffers()) == []


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=[case[0] for case in REFERENCE_CASES])
def test_outputs_equal_the_originals(case, reference, tiny_models):
    name, frames, videos, seed, names = case
    model = tiny_models[frames]
    ref = {key: torch.from_numpy(reference[f"{name}/{key}"]) for key in
           ("token_ids", "text_features", "frame_features", "video_features", "prompts", "logits")}
    video = reference_video(seed, videos, frames)
    ids = tokenize_class_names(names)
    assert torch.equal(ids, ref["token_ids"])
    with torch.no_grad():
        frame_features, _ = model.visual(video.flatten(0, 1))
        video_features, visual_prompts = model.encode_video(video)
        text = model.class_text_features(ids)
        prompts = model.prompts_generator(text.expand(videos, -1, -1), visual_prompts)
        logits = model(video, ids)
    torch.testing.assert_close(frame_features, ref["frame_features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(video_features, ref["video_features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(text, ref["text_features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(prompts, ref["prompts"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, ref["logits"], atol=ATOL, rtol=0)
    assert logits.shape == (videos, len(names))
    assert (logits.max(1).values - logits.min(1).values).min() > 0.1 or len(names) == 1  # not a flat output


def test_frames_talk_within_a_video_and_videos_never_mix(tiny_models):
    model = tiny_models[4]
    video = reference_video(5, 2, 4)
    changed = video.clone()
    changed[0, 3] += 1.0  # last frame of video 0
    with torch.no_grad():
        before, _ = model.visual(video.flatten(0, 1))
        after, _ = model.visual(changed.flatten(0, 1))
    assert (after[0] - before[0]).abs().max() > 1e-3  # frame 0 hears frame 3 through the message tokens
    torch.testing.assert_close(after[4:], before[4:], atol=0, rtol=0)  # video 1 is untouched


def test_cross_frame_block_keeps_the_block_hook_contract(tiny_models):
    """The clustering hook sees the frame tokens without the message token, before and after attention."""
    class RecordingHook(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(("before", tuple(x.shape)))
            return x

        def post_attention(self, x):
            self.seen.append(("after", tuple(x.shape)))
            return x

    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=4)).eval()
    video = reference_video(5, 2, 4)
    with torch.no_grad():
        expected = model(video, tokenize_class_names(REFERENCE_LABELS[:2]))
        hooks = [RecordingHook() for _ in model.visual.transformer.resblocks]
        model.visual.set_block_hooks(hooks)
        logits = model(video, tokenize_class_names(REFERENCE_LABELS[:2]))
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)
    assert hooks[5].seen == [("before", (8, 50, 64)), ("after", (8, 50, 64))]


def test_build_from_clip_takes_clip_weights_and_the_originals_init():
    clip = make_tiny_clip_state_dict(width=256, layers=2, embed_dim=128, text_width=64, text_layers=1, vocab=1000,
                                     resolution=64, dtype=torch.float16)
    model = build_xclip(clip, num_frames=8, seed=3)
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    for key, value in clip.items():
        assert torch.equal(state[key], value.float()), key
    W, D = 256, 128
    block = "visual.transformer.resblocks.1."
    # message_*: PyTorch defaults (Linear kaiming-uniform, a=sqrt(5): U(+-1/sqrt(W)); MHA xavier in-projection)
    fc = state[block + "message_fc.weight"]
    assert fc.abs().max() <= W ** -0.5 and fc.std().item() == pytest.approx((3 * W) ** -0.5, rel=0.05)
    fc_bias = state[block + "message_fc.bias"]
    assert fc_bias.abs().max() <= W ** -0.5 and fc_bias.abs().min() > 0
    xavier = math.sqrt(6 / (W + 3 * W))
    in_proj = state[block + "message_attn.in_proj_weight"]
    assert in_proj.abs().max() <= xavier and in_proj.std().item() == pytest.approx(xavier / math.sqrt(3), rel=0.05)
    for key in ("message_attn.in_proj_bias", "message_attn.out_proj.bias", "message_ln.bias"):
        assert torch.equal(state[block + key], torch.zeros_like(state[block + key])), key
    assert torch.equal(state[block + "message_ln.weight"], torch.ones(W))
    # MIT: trunc-normal(0.02) table and Linears with zero biases, xavier in-projection
    for key in ("mit.positional_embedding", "mit.resblocks.0.mlp.c_fc.weight", "mit.resblocks.0.attn.out_proj.weight"):
        assert state[key].std().item() == pytest.approx(0.02, rel=0.1), key
    assert state["mit.resblocks.0.attn.in_proj_weight"].abs().max() <= math.sqrt(6 / (D + 3 * D))
    assert state["mit.resblocks.0.attn.in_proj_weight"].std().item() > 0.05  # xavier, not 0.02
    # prompts: trunc-normal(0.02) Linears, zero biases, unit LayerNorms, alpha 0.1, standard normal projection
    for key in ("prompts_generator.decoder.0.cross_attn.q_proj.weight", "prompts_generator.decoder.1.mlp.3.weight"):
        assert state[key].std().item() == pytest.approx(0.02, rel=0.1), key
    zero = [k for k in state if k.startswith(("mit.", "prompts_")) and k.endswith("bias")]
    assert len(zero) == 6 + 1 + 2 * 5 + 1  # MIT (in-projection too), prompt norm, 2 decoder layers, visual LN
    assert all(not state[k].any() for k in zero)
    assert torch.equal(state["prompts_generator.alpha"], torch.full((D,), 0.1))
    assert torch.equal(state["prompts_generator.decoder.1.norm3.weight"], torch.ones(D))
    assert torch.equal(state["prompts_visual_ln.weight"], torch.ones(W))
    assert state["prompts_visual_proj"].std().item() == pytest.approx(1.0, rel=0.03)


def test_build_from_clip_is_seeded_without_touching_the_global_rng():
    clip = make_tiny_clip_state_dict(layers=2, text_layers=1, vocab=1000, resolution=64)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_xclip(clip, 8, seed=1).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    b = build_xclip(clip, 8, seed=1).state_dict()
    c = build_xclip(clip, 8, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["prompts_visual_proj"], c["prompts_visual_proj"])


def test_build_from_clip_rejects_xclip_weights_and_incomplete_clip():
    with pytest.raises(ValueError, match="build_xclip_from_checkpoint"):
        build_xclip(make_tiny_xclip_state_dict(layers=2, text_layers=1, vocab=1000, resolution=64), 8)
    clip = make_tiny_clip_state_dict(layers=2, text_layers=1, vocab=1000, resolution=64)
    del clip["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"visual\.transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        build_xclip(clip, 8)


def test_text_cache_is_keyed_by_the_tokens(tiny_models):
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=4)).eval()
    video = reference_video(5, 2, 4)
    first, second = tokenize_class_names(REFERENCE_LABELS[:3]), tokenize_class_names(REFERENCE_LABELS[3:])
    calls = []
    encode_text = model.encode_text
    model.encode_text = lambda ids: calls.append(ids[:, 1].tolist()) or encode_text(ids)
    with torch.no_grad():
        a = model(video, first)
        a_again = model(video, first.clone())
        b = model(video, second)
        a_last = model(video, first)
    assert calls == [first[:, 1].tolist(), second[:, 1].tolist(), first[:, 1].tolist()]  # only when tokens change
    torch.testing.assert_close(a_again, a, atol=0, rtol=0)
    torch.testing.assert_close(a_last, a, atol=0, rtol=0)
    assert (a - b).abs().max() > 1e-2  # a new label list is encoded, never served stale
    torch.testing.assert_close(b, tiny_models[4](video, second), atol=0, rtol=0)


def test_text_cache_never_changes_the_mode():
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=4, layers=2, text_layers=1,
                                                                    vocab=1000, resolution=64))
    ids = torch.tensor([[999, 5, 998] + [0] * 74])
    for training in (False, True, False):
        model.train(training)
        model.clear_text_cache()
        with torch.no_grad():
            model(reference_video(5, 1, 4, size=64), ids)
        assert all(m.training is training for m in model.modules())


def test_loading_weights_clears_the_text_cache(tiny_models):
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(seed=5, num_frames=4)).eval()
    video, ids = reference_video(5, 2, 4), tokenize_class_names(REFERENCE_LABELS)
    with torch.no_grad():
        stale = model(video, ids)
        model.load_state_dict(tiny_models[4].state_dict())
        fresh = model(video, ids)
        expected = tiny_models[4](video, ids)
    torch.testing.assert_close(fresh, expected, atol=0, rtol=0)
    assert (stale - expected).abs().max() > 1e-2


def test_without_the_cache_the_text_tower_gets_gradients():
    state = make_tiny_xclip_state_dict(num_frames=4, layers=2, text_layers=1, vocab=1000, resolution=64)
    video = reference_video(5, 2, 4, size=64)
    ids = torch.tensor([[999, 5, 998] + [0] * 74, [999, 7, 8, 998] + [0] * 73])
    for cache_text in (True, False):
        model = build_xclip_from_checkpoint(state, cache_text=cache_text)
        model(video, ids).sum().backward()
        assert (model.ln_final.weight.grad is None) is cache_text
        assert model.prompts_generator.alpha.grad.abs().sum() > 0


def test_features_cached_in_inference_mode_are_not_reused_for_training():
    model = build_xclip_from_checkpoint(make_tiny_xclip_state_dict(num_frames=4, layers=2, text_layers=1,
                                                                    vocab=1000, resolution=64))
    video, ids = reference_video(5, 2, 4, size=64), torch.tensor([[999, 5, 998] + [0] * 74])
    with torch.inference_mode():
        expected = model(video, ids)
    logits = model(video, ids)
    logits.sum().backward()  # would fail on an inference tensor saved for backward
    torch.testing.assert_close(logits.detach(), expected, atol=0, rtol=0)


def test_frame_count_mismatch_is_refused():
    state = make_tiny_xclip_state_dict(num_frames=8, layers=2, text_layers=1, vocab=1000, resolution=64)
    with pytest.raises(ValueError, match=r"trained with 8 frames .* --max_frames is 16: pass --max_frames 8"):
        build_xclip_from_checkpoint(state, num_frames=16)
    model = build_xclip_from_checkpoint(state, num_frames=8)
    with pytest.raises(ValueError, match=r"8 frames per video \(--max_frames\), got 4"):
        model(reference_video(1, 1, 4, size=64), torch.tensor([[999, 998] + [0] * 75]))


def test_depths_and_frames_are_read_from_the_checkpoint_keys():
    state = make_tiny_xclip_state_dict(num_frames=6, mit_layers=2, prompts_layers=3, layers=3, text_layers=1,
                                       vocab=1000, resolution=64)
    model = build_xclip_from_checkpoint(state)
    cfg = model.xclip_config
    assert (cfg.num_frames, cfg.mit_layers, cfg.prompts_layers, cfg.clip.vision_layers) == (6, 2, 3, 3)


def test_class_names_are_tokenised_whole_or_refused():
    ids = tokenize_class_names(["a " * 75, "riding a bike"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, 0] == 49406 and ids[0, 76] == 49407 and (ids[0, 1:76] == 320).all()
    assert ids[1, :5].tolist() == [49406, 6765, 320, 3701, 49407] and not ids[1, 5:].any()
    with pytest.raises(ValueError, match=r"class name 'a a .*' \(class 1\) is 76 BPE tokens long; at most 75"):
        tokenize_class_names(["ok", "a " * 76])


def test_drop_path_rates_and_per_row_dropping():
    clip = make_tiny_clip_state_dict(layers=5, text_layers=1, vocab=1000, resolution=64)
    model = build_xclip(clip, 4, drop_path_rate=0.2)
    rates = [getattr(block.drop_path, "rate", 0.0) for block in model.visual.transformer.resblocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert isinstance(model.visual.transformer.resblocks[0].drop_path, torch.nn.Identity)
    drop = DropPath(0.3)
    x = torch.ones(4000, 3, 2)
    torch.manual_seed(0)
    y = drop(x)
    kept = y[:, 0, 0] > 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.7)) and not y[~kept].any()
    assert torch.equal(drop.eval()(x), x)
