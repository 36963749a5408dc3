"""TokenCluster on plain tensors: layout, chunks, [CLS] averaging, embeddings, baselines, dtypes."""
import pytest
import torch

from modules.cluster import ClusterSpec, TokenCluster, build_cluster_specs, build_token_clusters
from tests.cluster_reference import reference_kmedoids, reference_spectral, reference_spg

B, T, N_TOK, W = 5, 12, 9, 8  # 5 videos of 12 frames, 9 tokens per frame (3 x 3 grid), width 8


def make_spec(algorithm='kmediods++', frames_out=4, k=6, **kw):
    return ClusterSpec(algorithm=algorithm, block=6, frames_in=T, frames_out=frames_out, tokens_in=N_TOK,
                       tokens_out=k, tokens_per_frame=N_TOK, width=W, chunk_size=16, **kw)


def residual_stream(seed=0, dtype=torch.float32):
    """(B·T, 1 + n, W), row b·T + t; frames of a video are similar, as in real videos."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 1, 1 + N_TOK, W, generator=g)
    return (video + 0.5 * torch.randn(B, T, 1 + N_TOK, W, generator=g)).reshape(B * T, 1 + N_TOK, W).to(dtype)


def reference_output(x, spec, cluster, embed=None):
    """Loops: segment s of video b pools frames s·d .. s·d + d - 1; sets are stacked segment-major
    (row s·B + b) and clustered in chunks of spec.chunk_size; output row b·f_out + s."""
    d, f_out = spec.segment_frames, spec.frames_out
    sets = torch.stack([torch.cat([x[b * T + s * d + j, 1:] for j in range(d)]) for s in range(f_out)
                        for b in range(B)])  # (M, d·n, W)
    results = [cluster(chunk) for chunk in sets.split(spec.chunk_size)]
    assignment = torch.cat([a for a, _ in results])
    medoids = torch.cat([m for _, m in results])
    rows = []
    for b in range(B):
        for s in range(f_out):
            m = s * B + b
            cls = torch.stack([x[b * T + s * d + j, 0] for j in range(d)]).mean(0, keepdim=True)
            if spec.aggregation == 'mean':
                kept = torch.stack([sets[m][assignment[m] == j].mean(0) for j in range(spec.tokens_out)])
            else:
                kept = sets[m][medoids[m]]
            if embed is not None:
                kept = kept + embed
            rows.append(torch.cat([cls, kept]))
    return torch.stack(rows), medoids


@pytest.mark.parametrize("frames_out", [4, 3, 6, 12])
def test_kmedoids_layout_chunks_and_cls(frames_out):
    spec = make_spec(frames_out=frames_out, distance='cosine')
    x = residual_stream(1)
    expected, _ = reference_output(x, spec, lambda c: reference_kmedoids(c, 6, distance='cosine'))
    out = TokenCluster(spec)(x)
    assert out.shape == (B * frames_out, 1 + 6, W)
    assert torch.equal(out[:, 1:], expected[:, 1:])
    assert torch.allclose(out[:, 0], expected[:, 0], atol=1e-6, rtol=0)


def test_chunks_are_not_the_whole_batch():
    """M = 20 segments in chunks of 16 and 4: the distance shift and stop rule are per chunk."""
    spec = make_spec(threshold=1e-6, iter_limit=2)
    x = residual_stream(2)
    x[:, 1:] *= torch.linspace(0.1, 10.0, B * T).view(-1, 1, 1)  # chunks with very different scales
    expected, medoids = reference_output(x, spec, lambda c: reference_kmedoids(c, 6, threshold=1e-6, iter_limit=2))
    assert torch.equal(TokenCluster(spec)(x)[:, 1:], expected[:, 1:])


def test_mean_aggregation_and_gradients():
    spec = make_spec(aggregation='mean')
    x = residual_stream(3).requires_grad_()
    expected, _ = reference_output(x.detach(), spec, lambda c: reference_kmedoids(c, 6))
    out = TokenCluster(spec)(x)
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, 1:].abs().sum() > 0


def test_medoid_gradients_reach_only_medoid_tokens():
    spec = make_spec()
    x = residual_stream(4).requires_grad_()
    out = TokenCluster(spec)(x)
    out[:, 1:].sum().backward()
    chosen = (x.grad[:, 1:] != 0).all(dim=-1)  # (B·T, n)
    assert chosen.sum() == B * 4 * 6  # exactly the K medoids of every segment
    assert torch.equal(x.grad[:, 0], torch.zeros(B * T, W))


def test_cluster_embedding_from_clip():
    spec = make_spec(cluster_embedding=True, embed_from_clip=True)
    positional = torch.randn(1 + N_TOK, W)
    module = TokenCluster(spec, positional)
    assert torch.equal(module.cluster_embed.data, positional[1:7])
    x = residual_stream(5)
    expected, _ = reference_output(x, spec, lambda c: reference_kmedoids(c, 6), embed=positional[1:7])
    out = module(x)
    assert torch.equal(out[:, 1:], expected[:, 1:])
    assert torch.allclose(out[:, 0], expected[:, 0], atol=1e-6, rtol=0)  # no embedding on [CLS]
    out.sum().backward()
    assert torch.equal(module.cluster_embed.grad, torch.full((6, W), float(B * 4)))


def test_state_dict_entries_and_strict_load():
    spec = make_spec('spectral', cluster_embedding=True, embed_from_clip=False, cluster_frame_embedding=True,
                     spectral_spg=True)
    module = TokenCluster(spec)
    sd = module.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        'cluster_embed': (6, W), 'cluster_frame_embed': (3, 1, W), 'spg': (1, 27, 27)}
    assert torch.equal(sd['spg'], reference_spg(N_TOK, 3, wide=False))
    other = TokenCluster(spec)
    other.load_state_dict(sd, strict=True)
    assert torch.equal(other.cluster_embed, module.cluster_embed)
    assert list(TokenCluster(make_spec()).state_dict()) == []


def test_spectral_module_with_spg():
    spec = make_spec('spectral', spectral_graph='KNN', spectral_knn_k=8, spectral_spg=True, frames_out=6)
    x = residual_stream(6)
    spg = reference_spg(N_TOK, 2, wide=False)
    expected, _ = reference_output(x, spec, lambda c: reference_spectral(c, 6, graph='KNN', knn_k=8, spg=spg))
    assert torch.equal(TokenCluster(spec)(x)[:, 1:], expected[:, 1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_clusters_in_fp32(dtype):
    spec = make_spec(cluster_embedding=True, embed_from_clip=False)
    module = TokenCluster(spec)
    x = residual_stream(7, dtype)
    out = module(x)
    assert out.dtype == dtype
    reference = module(x.float())
    # same medoids as fp32 clustering of the same values: the kept tokens are the same fp16 values
    assert torch.equal(out[:, 1:], (reference[:, 1:] - module.cluster_embed).to(dtype) + module.cluster_embed.to(dtype))


def test_autocast_gives_the_same_tokens():
    module = TokenCluster(make_spec(aggregation='mean'))
    x = residual_stream(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.float32 and torch.equal(out, module(x))


def test_pooling():
    x = residual_stream(9)
    out = TokenCluster(make_spec('pooling'))(x)
    expected = torch.stack([x[b * T + s * 3: b * T + s * 3 + 3].mean(0) for b in range(B) for s in range(4)])
    assert out.shape == (B * 4, 1 + N_TOK, W) and torch.allclose(out, expected, atol=1e-6, rtol=0)


def test_sparse_sampling_eval_takes_stride_centres():
    module = TokenCluster(make_spec('sparse_sampling')).eval()
    x = residual_stream(10)
    out = module(x)
    centres = [2, 6, 11, 15, 20, 24]  # int(4.5 / 2 + 4.5 i) over the 27 tokens of a segment
    for b in range(B):
        for s in range(4):
            tokens = torch.cat([x[b * T + s * 3 + j, 1:] for j in range(3)])
            assert torch.equal(out[b * 4 + s, 1:], tokens[centres])
            assert torch.allclose(out[b * 4 + s, 0], x[b * T + s * 3: b * T + s * 3 + 3, 0].mean(0), atol=1e-6)


def test_sparse_sampling_train_one_random_token_per_stride():
    module = TokenCluster(make_spec('sparse_sampling')).train()
    x = torch.arange(B * T * (1 + N_TOK), dtype=torch.float32).view(B * T, 1 + N_TOK, 1).expand(-1, -1, W).contiguous()
    torch.manual_seed(0)
    picks = set()
    for _ in range(20):
        out = module(x)
        for s in range(4):
            per_video = []
            for b in range(B):
                tokens = torch.cat([x[b * T + s * 3 + j, 1:, 0] for j in range(3)]).tolist()
                per_video.append([tokens.index(v) for v in out[b * 4 + s, 1:, 0].tolist()])
            index = per_video[0]
            assert all(4 * i <= j < 4 * i + 4 for i, j in enumerate(index))  # stride 27 // 6 = 4
            assert per_video == [index] * B  # one draw per segment position, shared by the videos
            picks.add(tuple(index))
    assert len(picks) > 10


def reference_tsm(v, shift_cls):
    """v (B, T, L, W); loops over frames: next frame into [0, fold), previous into [fold, 2·fold)."""
    out = v.clone()
    fold = W // 8
    tokens = [0] if shift_cls else list(range(1, v.shape[2]))
    for t in range(T):
        for i in tokens:
            out[:, t, i, :fold] = v[:, t + 1, i, :fold] if t + 1 < T else 0
            out[:, t, i, fold:2 * fold] = v[:, t - 1, i, fold:2 * fold] if t > 0 else 0
    return out.reshape(B * T, -1, W)


def test_temporal_shift():
    module = TokenCluster(ClusterSpec('temporal_shift', 1, T, T, 49, 48, N_TOK, W, 16))
    x = residual_stream(11)
    assert torch.equal(module(x), reference_tsm(x.view(B, T, -1, W), shift_cls=False))
    assert module.post_attention(x) is x


def test_token_shift_before_and_after_attention():
    module = TokenCluster(ClusterSpec('token_shift', 1, T, T, 49, 48, N_TOK, W, 16))
    x = residual_stream(12)
    expected = reference_tsm(x.view(B, T, -1, W), shift_cls=True)
    assert torch.equal(module(x), expected)
    assert torch.equal(module.post_attention(x), expected)


def test_build_token_clusters_and_errors():
    specs = build_cluster_specs([N_TOK] * 12, [12] * 6 + [4] * 6, 12, True, 'kmediods++', W, N_TOK, 16,
                                cluster_embedding=True)
    with pytest.raises(ValueError, match="cluser_embed_from_clip"):
        build_token_clusters(specs)
    modules = build_token_clusters(specs, torch.randn(1 + N_TOK, W))
    assert [i for i, m in enumerate(modules) if m is not None] == [6]
    with pytest.raises(ValueError, match="cluser_embed_from_clip"):
        TokenCluster(make_spec(k=9, cluster_embedding=True), torch.randn(1 + 8, W))
    with pytest.raises(ValueError, match="multiple of 12 frames"):
        modules[6](torch.randn(30, 1 + N_TOK, W))
