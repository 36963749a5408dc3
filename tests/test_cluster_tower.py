"""Token clustering inside the tiny CLIP image tower, through `VisionTransformer.set_block_hooks`."""
import pytest
import torch

from modules.clip import build_clip
from modules.cluster import (batch_kmedoids, build_cluster_specs, build_token_clusters, chunk_size_for,
                             final_frames)
from tests.tiny_clip import make_tiny_clip_state_dict

B, T = 5, 12  # 5 videos: 20 segments of B6-4, clustered in chunks of 16 and 4


@pytest.fixture(scope="module")
def clip():
    return build_clip(make_tiny_clip_state_dict(seed=0)).eval()


@pytest.fixture(scope="module")
def frames():
    return torch.randn(B * T, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def stem(visual, frames):
    x = visual.conv1(frames).flatten(2).transpose(1, 2)  # (B·T, 49, W)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    return visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)


def run_blocks(visual, x, before_block):
    """The blocks written out; `before_block(i, x)` replaces the hook before block i's attention."""
    for i, block in enumerate(visual.transformer.resblocks):
        x = before_block(i, x)
        x = x + block.attn(block.ln_1(x))
        x = x + block.mlp(block.ln_2(x))
    return visual.ln_post(x[:, 0]) @ visual.proj


def install(clip, algorithm, ks, fs, **kw):
    visual = clip.visual
    specs = build_cluster_specs(ks, fs, T, True, algorithm, visual.conv1.weight.shape[0], 49,
                                chunk_size_for(visual.patch_size), **kw)
    visual.set_block_hooks(build_token_clusters(specs, visual.positional_embedding))
    visual.eval()  # new modules start in training mode; sparse sampling draws at random there
    return specs


def test_kmedoids_b6_4_in_tower(clip, frames):
    visual = clip.visual
    specs = install(clip, 'kmediods++', [49] * 12, [12] * 6 + [4] * 6, cluster_embedding=True)
    try:
        with torch.no_grad():
            out = visual(frames)
        key = 'visual.transformer.resblocks.6.tokencluster_inter.cluster_embed'
        assert torch.equal(clip.state_dict()[key], visual.positional_embedding[1:50])
        assert [k for k in clip.state_dict() if 'tokencluster_inter' in k] == [key]
    finally:
        visual.set_block_hooks([None] * 12)
    assert out.shape == (B * 4, 64) and final_frames(specs, T) == 4

    def cluster_at_block_7(i, x):
        if i != 6:
            return x
        segments = torch.stack([torch.cat([x[b * T + s * 3 + j, 1:] for j in range(3)])
                                for s in range(4) for b in range(B)])  # (20, 147, W), row s·B + b
        medoids = torch.cat([batch_kmedoids(c, 49)[1] for c in segments.split(16)])
        rows = [torch.cat([x[b * T + s * 3: b * T + s * 3 + 3, :1].mean(0),
                           segments[s * B + b][medoids[s * B + b]] + visual.positional_embedding[1:50]])
                for b in range(B) for s in range(4)]
        return torch.stack(rows)

    with torch.no_grad():
        expected = run_blocks(visual, stem(visual, frames), cluster_at_block_7)
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("algorithm,kw", [('spectral', dict(spectral_spg=1)), ('pooling', {}),
                                          ('sparse_sampling', {}), ('temporal_shift', {})])
def test_other_algorithms_in_tower(clip, frames, algorithm, kw):
    visual = clip.visual
    shifting = algorithm.endswith('shift')
    ks = list(range(49, 37, -1)) if shifting else [49] * 8 + [20] * 4
    fs = [12] * 12 if shifting else [12] * 8 + [6] * 4
    specs = install(clip, algorithm, ks, fs, **kw)
    hooks = [block.tokencluster_inter for block in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            out = visual(frames)
    finally:
        visual.set_block_hooks([None] * 12)

    def reference(i, x):
        return x if hooks[i] is None else hooks[i](x)

    rows = B * final_frames(specs, T)
    assert out.shape == (rows, 64)
    with torch.no_grad():
        expected = run_blocks(visual, stem(visual, frames), reference)
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


def test_token_shift_twice_per_block(clip, frames):
    visual = clip.visual
    install(clip, 'token_shift', list(range(49, 37, -1)), [12] * 12)
    hooks = [block.tokencluster_inter for block in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            out = visual(frames)
    finally:
        visual.set_block_hooks([None] * 12)
    x = stem(visual, frames)
    with torch.no_grad():
        once = run_blocks(visual, x, lambda i, x: x if hooks[i] is None else hooks[i](x))
        for i, block in enumerate(visual.transformer.resblocks):
            if hooks[i] is not None:
                x = hooks[i](x)
            x = x + block.attn(block.ln_1(x))
            if hooks[i] is not None:
                x = hooks[i].post_attention(x)
            x = x + block.mlp(block.ln_2(x))
        expected = visual.ln_post(x[:, 0]) @ visual.proj
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, once, atol=1e-3)  # the shift after attention matters
