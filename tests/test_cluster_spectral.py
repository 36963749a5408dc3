"""batch_spectral and the spatio-temporal graph against plain references (SPEC §3)."""
import pytest
import torch

from modules.cluster import batch_spectral, spatial_temporal_graph
from modules.cluster.spectral import graph_affinity, normalized_laplacian, sign_corrected
from tests.cluster_reference import reference_spectral, reference_spg


def video_tokens(seed, m=3, frames=2, n=25, c=8):
    """Tokens of `frames` similar frames, so the graph has structure, as inside the tower."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randn(m, 1, n, c, generator=g)
    x = frame + 0.3 * torch.randn(m, frames, n, c, generator=g)
    return x.reshape(m, frames * n, c)


def check_same(x, k, spg=None, **kw):
    assignment, medoids = batch_spectral(x, k, spatial_temporal_graph=spg, **kw)
    ref_assignment, ref_medoids = reference_spectral(x, k, spg=spg, **kw)
    assert torch.equal(medoids, ref_medoids)
    assert torch.equal(assignment, ref_assignment)
    return assignment, medoids


@pytest.mark.parametrize("kw", [dict(), dict(correct_sign=False), dict(graph='KNN', knn_k=10),
                                dict(graph='KNN', knn_k=5, correct_sign=False), dict(sigma=1.5),
                                dict(distance='cosine'), dict(norm_p=1.0, threshold=1e-6)])
def test_matches_reference(kw):
    check_same(video_tokens(0), 12, **kw)


@pytest.mark.parametrize("graph", ['HeatKernel', 'KNN'])
def test_with_spatial_temporal_graph(graph):
    spg = spatial_temporal_graph(49, 2, wide=False)
    check_same(video_tokens(1, m=2, n=49), 16, spg=spg, graph=graph, knn_k=10)


def test_repeated_frames():
    x = video_tokens(2, frames=1).repeat(1, 3, 1)  # three identical frames
    check_same(x, 16, graph='KNN', knn_k=15)


def test_k_equals_n():
    x = video_tokens(3, m=2, frames=1, n=16)
    assignment, medoids = check_same(x, 16)
    assert torch.equal(medoids, torch.arange(16).expand(2, 16))


def test_knn_graph_is_symmetric_or_and_keeps_diagonal():
    x = video_tokens(4, m=2, frames=1, n=30)
    dense = graph_affinity(x, 'HeatKernel', 0, 2.0, None)
    knn = graph_affinity(x, 'KNN', 4, 2.0, None)
    for m in range(2):
        for i in range(30):
            kth = sorted(dense[m, i].tolist(), reverse=True)[3]
            for j in range(30):
                kth_j = sorted(dense[m, j].tolist(), reverse=True)[3]
                kept = dense[m, i, j] >= kth or dense[m, j, i] >= kth_j
                assert knn[m, i, j] == (dense[m, i, j] if kept else 0.0)
    assert torch.equal(knn != 0, (knn != 0).transpose(1, 2))
    assert (knn.diagonal(dim1=1, dim2=2) > 0.99).all()


@pytest.mark.parametrize("graph", ['HeatKernel', 'KNN'])
def test_laplacian_bitwise_equal_to_two_bmm(graph):
    affinity = graph_affinity(video_tokens(6, m=4, frames=3, n=49, c=32), graph, 12, 2.0, None)
    inv = torch.diag_embed(affinity.sum(-1).pow(-0.5))
    expected = torch.bmm(torch.bmm(inv, torch.diag_embed(affinity.sum(-1)) - affinity), inv)
    assert torch.equal(normalized_laplacian(affinity), expected)


def test_sign_correction_flips_and_zeroes():
    u = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]])
    s = torch.tensor([[2.0, 1.0, 0.0]])
    vh = torch.tensor([[[1.0, -3.0, 1.0], [-1.0, -1.0, 0.5], [5.0, 5.0, 5.0]]])
    # column 0: 2·[1,-3,1] -> 4 - 36 + 4 < 0, flip; column 1: [-1,-1,.5] -> -1 - 1 + .25 < 0, flip;
    # column 2: singular value 0 -> sum 0 -> column zeroed
    expected = torch.tensor([[[-1.0, -2.0, 0.0], [-4.0, -5.0, 0.0], [-7.0, -8.0, 0.0]]])
    assert torch.equal(sign_corrected(u, s, vh), expected)


@pytest.mark.parametrize("n,frames,wide", [(49, 3, False), (16, 2, False), (10, 2, False), (160, 1, True)])
def test_spatial_temporal_graph(n, frames, wide):
    graph = spatial_temporal_graph(n, frames, wide)
    assert graph.shape == (1, n * frames, n * frames) and graph.dtype == torch.float32
    assert torch.equal(graph, reference_spg(n, frames, wide))


def test_spatial_temporal_graph_reach():
    graph = spatial_temporal_graph(49, 8, wide=False)[0]
    # token 0 (frame 0, row 0, col 0): frames 0..3, rows and columns 0..4
    linked = graph[0].nonzero().flatten().tolist()
    assert linked == [t * 49 + r * 7 + c for t in range(4) for r in range(5) for c in range(5)]


def test_input_dtype_and_autocast():
    x = video_tokens(5)
    expected = batch_spectral(x, 12)
    assert torch.equal(expected[1], reference_spectral(x, 12)[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = batch_spectral(x.half(), 12)
    ref = batch_spectral(x.half().float(), 12)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[0], ref[0])
    assert expected[1].shape == (3, 12)


@pytest.mark.parametrize("kw,flag", [(dict(graph='kNN'), "spectral_graph"),
                                     (dict(graph='KNN', knn_k=99), "spectral_knn_k"),
                                     (dict(spatial_temporal_graph=torch.ones(1, 5, 5)), "spatial_temporal_graph")])
def test_bad_arguments(kw, flag):
    with pytest.raises(ValueError, match=flag):
        batch_spectral(torch.randn(2, 40, 3), 4, **kw)


def test_chunks_in_one_call_equal_separate_calls():
    x = video_tokens(4, m=5)
    assignment, medoids = batch_spectral(x, 10, chunk_size=2)
    for rows in (slice(0, 2), slice(2, 4), slice(4, 5)):
        ref_assignment, ref_medoids = reference_spectral(x[rows], 10)
        assert torch.equal(medoids[rows], ref_medoids) and torch.equal(assignment[rows], ref_assignment)
