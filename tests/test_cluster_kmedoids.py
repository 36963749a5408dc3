"""batch_kmedoids against the loop reference of SPEC §3, on random and adversarial inputs."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from modules.cluster import batch_kmedoids, kmedoids
from modules.cluster.distance import kkz_init, pairwise_distances, shift_distances
from tests.cluster_reference import reference_kmedoids


def check_same(x, k, **kw):
    assignment, medoids = batch_kmedoids(x, k, **kw)
    ref_assignment, ref_medoids = reference_kmedoids(x, k, **kw)
    assert assignment.dtype == medoids.dtype == torch.int64
    assert torch.equal(medoids, ref_medoids)
    assert torch.equal(assignment, ref_assignment)
    return assignment, medoids


@pytest.mark.parametrize("seed,m,n,c,k", [(0, 3, 30, 8, 6), (1, 4, 49, 16, 10), (2, 2, 98, 32, 49), (3, 5, 20, 4, 19)])
def test_random_euclidean(seed, m, n, c, k):
    x = torch.randn(m, n, c, generator=torch.Generator().manual_seed(seed))
    assignment, medoids = check_same(x, k)
    assert torch.equal(medoids, medoids.sort(dim=1).values)
    # a medoid belongs to its own cluster
    assert torch.equal(assignment.gather(1, medoids), torch.arange(k).expand(m, k))


@pytest.mark.parametrize("kw", [dict(distance='cosine'), dict(norm_p=1.0), dict(norm_p=3.0),
                                dict(pre_norm=True), dict(distance='cosine', pre_norm=True),
                                dict(threshold=0.0, iter_limit=7), dict(iter_limit=0), dict(iter_limit=1),
                                dict(threshold=1e9)])
def test_options(kw):
    x = torch.randn(3, 40, 12, generator=torch.Generator().manual_seed(5)) + 2.0
    check_same(x, 9, **kw)


def test_near_ties_cosine():
    """Similar tokens give near-tied cosine distances, the case where rounding decides."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(4, 1, 32, generator=g)
    x = base + 1e-3 * torch.randn(4, 60, 32, generator=g)
    check_same(x, 12, distance='cosine', threshold=1e-6)


def test_duplicate_tokens_repeated_frames():
    """A short video padded by repeating frames: every token appears two or three times."""
    g = torch.Generator().manual_seed(11)
    frame = torch.randn(4, 49, 24, generator=g)
    other = torch.randn(4, 49, 24, generator=g)
    x = torch.cat([frame, frame, other, frame], dim=1)  # (4, 196, 24)
    for k in (10, 49, 60):
        check_same(x, k)
    check_same(x, 20, distance='cosine')


def test_exact_ties_integer_tokens():
    """Integer coordinates with p = 1: distances and sums are exact, so every tie is a real tie
    and must go to the first index."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (6, 36, 3), generator=g).float()
    for k in (1, 4, 9, 20):
        check_same(x, k, norm_p=1.0)


def test_all_tokens_equal():
    x = torch.ones(2, 10, 4)
    assignment, medoids = check_same(x, 3)
    assert medoids.tolist() == [[0, 1, 2]] * 2


def test_empty_clusters_from_rounding():
    """A large common offset makes cdist's rounding exceed the -1 on the diagonal: clusters can
    lose every member, and then the original's argmin over all-zero scores picks token 0."""
    for seed in (0, 6):
        g = torch.Generator().manual_seed(seed)
        x = 3e3 * torch.randn(1, 1, 8, generator=g) + torch.randn(3, 40, 8, generator=g)
        assignment, medoids = check_same(x, 10)
        assert any(len(set(row.tolist())) < 10 for row in medoids)  # a repeated medoid: an emptied cluster


def test_k_equals_n_and_k_one():
    x = torch.randn(3, 25, 8, generator=torch.Generator().manual_seed(2))
    assignment, medoids = check_same(x, 25)
    assert torch.equal(medoids, torch.arange(25).expand(3, 25))
    assert torch.equal(assignment, torch.arange(25).expand(3, 25))
    assignment, medoids = check_same(x, 1)
    assert torch.equal(assignment, torch.zeros(3, 25, dtype=torch.long))


def test_converged_samples_are_frozen_without_changing_results(monkeypatch):
    """Sample 0 has 6 clean clusters (converges at once), the others are noise (several iterations)."""
    g = torch.Generator().manual_seed(12)
    centres = 10 * torch.randn(6, 8, generator=g)
    clean = (centres.repeat_interleave(8, dim=0) + 0.01 * torch.randn(48, 8, generator=g)).unsqueeze(0)
    x = torch.cat([clean, torch.randn(3, 48, 8, generator=g)])
    sizes = []
    update = kmedoids.update_medoids

    def recording_update(dist, assignment, k):
        sizes.append(dist.shape[0])
        return update(dist, assignment, k)

    monkeypatch.setattr(kmedoids, "update_medoids", recording_update)
    check_same(x, 6, threshold=0.0)
    assert sizes[0] == 4 and min(sizes) < 4


def test_incremental_kkz_matches_full_recompute():
    x = torch.randn(4, 70, 10, generator=torch.Generator().manual_seed(9))
    dist = shift_distances(pairwise_distances(x))
    seeds = kkz_init(x, dist, 30)
    for m in range(4):
        chosen = [int(x[m].norm(dim=-1).argmax())]
        for _ in range(29):
            chosen.append(int(dist[m, chosen].min(dim=0).values.argmax()))
        assert seeds[m].tolist() == chosen


def test_shift_is_global_over_the_chunk():
    """One constant for the whole chunk: each sample's shifted distances differ from its raw ones
    by the chunk-wide maximum + 1 (+1 more on the diagonal)."""
    x = torch.randn(3, 12, 4, generator=torch.Generator().manual_seed(4))
    x[1] *= 10
    raw = pairwise_distances(x)
    shifted = shift_distances(raw.clone())
    offset = raw.max() + 1.0
    expected = raw - offset - torch.eye(12)
    assert torch.allclose(shifted, expected, atol=1e-5)
    assert shifted.max() <= -1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_input_dtype_clusters_in_fp32(dtype):
    x = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    assignment, medoids = batch_kmedoids(x, 8)
    ref_assignment, ref_medoids = reference_kmedoids(x.float(), 8)
    assert torch.equal(medoids, ref_medoids) and torch.equal(assignment, ref_assignment)


def test_autocast_and_grad_do_not_change_the_result():
    x = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(8), requires_grad=True)
    expected = reference_kmedoids(x.detach(), 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assignment, medoids = batch_kmedoids(x, 8)
    assert not medoids.requires_grad
    assert torch.equal(medoids, expected[1]) and torch.equal(assignment, expected[0])


class LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_m_k_n_n_tensor():
    """Every intermediate is at most (M, N, N); the original's (M, K, N, N) would be K times that."""
    m, n, c, k = 4, 120, 8, 60
    x = torch.randn(m, n, c, generator=torch.Generator().manual_seed(0))
    with LargestTensor() as probe:
        batch_kmedoids(x, k)
    assert probe.numel <= m * n * n < m * k * n * n


def test_large_k_feasible():
    """M·K·N² here is 32 x 400 x 512² floats = 13 GiB, the original's formulation could not run."""
    x = torch.randn(32, 512, 16, generator=torch.Generator().manual_seed(0))
    assignment, medoids = batch_kmedoids(x, 400, iter_limit=3)
    assert medoids.shape == (32, 400) and assignment.shape == (32, 512)
    assert torch.equal(assignment.gather(1, medoids), torch.arange(400).expand(32, 400))


@pytest.mark.parametrize("kw,flag", [(dict(k=0), "cluster_num_blocks"), (dict(k=41), "cluster_num_blocks"),
                                     (dict(k=3, distance='manhattan'), "cluster_distance"),
                                     (dict(k=3, iter_limit=-1), "cluster_iter_limit"),
                                     (dict(k=3, norm_p=0.0), "minkowski_norm_p")])
def test_bad_arguments(kw, flag):
    with pytest.raises(ValueError, match=flag):
        batch_kmedoids(torch.randn(2, 40, 3), **kw)


@pytest.mark.parametrize("seed,m,n,c,scale", [(0, 3, 26, 5, 1.0), (1, 17, 98, 768, 1.0), (2, 5, 147, 64, 1e3),
                                              (3, 4, 60, 33, 1e-3), (4, 2, 196, 12, 30.0)])
def test_euclidean_distances_are_cdists_bits(seed, m, n, c, scale):
    """The distance matrix is torch.cdist's, bit for bit, also for strided and integer-valued inputs."""
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(m, n, c, generator=g) + seed
    for y in (x, x.round(), torch.randn(m, c, n, generator=g).transpose(1, 2), x[:, :, ::2], x[:1, :, ::2]):
        assert torch.equal(pairwise_distances(y), torch.cdist(y, y))
        assert torch.equal(pairwise_distances(y, chunk_size=2), torch.cat([torch.cdist(c, c) for c in y.split(2)]))


@pytest.mark.parametrize("kw", [dict(), dict(distance='cosine'), dict(threshold=0.0, iter_limit=9),
                                dict(norm_p=1.0)])
def test_chunks_in_one_call_equal_separate_calls(kw):
    """chunk_size=8 on 17 samples (chunks of 8, 8 and 1) gives each chunk the result of a call of its
    own; the clean chunk stops while the noisy ones iterate on."""
    g = torch.Generator().manual_seed(13)
    centres = 10 * torch.randn(6, 16, generator=g)
    clean = centres.repeat_interleave(5, dim=0) + 0.01 * torch.randn(8, 30, 16, generator=g)
    x = torch.cat([torch.randn(8, 30, 16, generator=g), clean, 3 * torch.randn(1, 30, 16, generator=g)])
    assignment, medoids = batch_kmedoids(x, 6, chunk_size=8, **kw)
    for chunk in range(3):
        rows = slice(8 * chunk, 8 * chunk + 8)
        ref_assignment, ref_medoids = reference_kmedoids(x[rows], 6, **kw)
        assert len(ref_medoids) == (8 if chunk < 2 else 1)
        assert torch.equal(medoids[rows], ref_medoids) and torch.equal(assignment[rows], ref_assignment)


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's values on the host (a device synchronisation on CUDA)."""
    READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__, torch.nonzero, torch.Tensor.nonzero,
             torch.Tensor.any, torch.Tensor.all}

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS and not (func in (torch.Tensor.any, torch.Tensor.all) and 'dim' in kwargs):
            self.reads += 1
        return func(*args, **kwargs)


def test_one_host_read_per_iteration(monkeypatch):
    x = torch.randn(6, 40, 8, generator=torch.Generator().manual_seed(14))
    iterations = []
    update = kmedoids.update_medoids
    monkeypatch.setattr(kmedoids, "update_medoids", lambda *a: iterations.append(1) or update(*a))
    with HostReads() as probe:
        batch_kmedoids(x, 7, chunk_size=4)
    assert len(iterations) > 2 and probe.reads == len(iterations)
