"""Batched k-medoids and spectral clustering: this project against the original's formulation.

The baseline is written here as the original computes it: medoid costs from a masked
`[M, K, N, N]` copy of the distances every iteration, KKZ re-reducing over all chosen seeds, the
Laplacian by two bmm's with diagonal matrices. Both run side by side on the same inputs (median of
--repeats interleaved runs) and the outputs are checked identical. `--device cuda` measures a GPU
(CUDA events). The original's time depends on the C allocator (its [M, K, N, N] tensors are page
faults under glibc's defaults), so the JSON records the MALLOC_* settings; `--stages` adds where
spectral clustering spends its time. "product ms" is the one batched product inside torch.cdist
(operands ready), which k-medoids needs whole to give cdist's distances bit for bit: the original's
time divided by it ("ceiling") bounds any exact implementation's speed-up.

    python benchmarks/bench_cluster.py --json bench_cluster.json
    MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/bench_cluster.py
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import describe, machine, timed, write_results  # noqa: E402
from modules.cluster import batch_kmedoids, batch_spectral  # noqa: E402
from modules.cluster import spectral  # noqa: E402

SHAPES = [(24, 98, 768), (16, 147, 768), (12, 196, 768)]


@torch.no_grad()
def original_kmedoids(x, k, threshold=1e-5, iter_limit=100):
    """The original's batched k-medoids (euclidean), as a baseline. Returns (assign, medoids, iterations)."""
    m, n, _ = x.shape
    dist = torch.cdist(x, x, p=2.0)
    dist = dist - dist.max() - 1.0
    diag = torch.arange(n, device=x.device)
    dist[:, diag, diag] -= 1.0
    dist_k = dist.unsqueeze(1).repeat(1, k, 1, 1)  # (M, K, N, N)
    rows = torch.arange(m, device=x.device).unsqueeze(1)
    medoids = torch.arange(k, device=x.device).unsqueeze(0).repeat(m, 1)
    medoids[:, 0] = x.norm(dim=-1).max(dim=1).indices
    for i in range(1, k):
        medoids[:, i] = dist[rows, medoids[:, :i], :].min(dim=1).values.max(dim=1).indices
    slots = torch.arange(k, device=x.device).view(1, k, 1)
    iterations = 0
    for _ in range(iter_limit):
        old = medoids
        assign = dist[rows, medoids, :].min(dim=1).indices  # (M, N)
        mask = assign.unsqueeze(1).repeat(1, k, 1) == slots  # (M, K, N)
        medoids = (dist_k * mask.unsqueeze(-1) * mask.unsqueeze(-2)).sum(-1).argmin(dim=-1)
        iterations += 1
        shift = ((x[rows, medoids, :] - x[rows, old, :]) ** 2).sum(-1).sqrt().sum(-1).mean()
        if shift < threshold:
            break
    medoids = medoids.sort(dim=1).values
    return dist[rows, medoids, :].min(dim=1).indices, medoids, iterations


@torch.no_grad()
def original_spectral(x, k, sigma=2.0):
    """The original's heat-kernel spectral clustering with Bro's sign correction, as a baseline."""
    sq = x.pow(2).sum(dim=-1, keepdim=True)
    affinity = torch.exp(-1.0 * torch.baddbmm(sq.transpose(1, 2), x, x.transpose(1, 2), alpha=-2).add(sq)
                         / (2 * sigma ** 2))
    degree = affinity.sum(dim=-1)
    inv = torch.diag_embed(degree.pow(-0.5))
    laplacian = torch.bmm(torch.bmm(inv, torch.diag_embed(degree) - affinity), inv)
    u, s, vh = torch.linalg.svd(laplacian, full_matrices=False)
    y = s.unsqueeze(-1) * vh
    u = torch.sign(torch.sum(torch.sign(y) * torch.square(y), dim=2)).unsqueeze(1) * u
    q = u[:, :, -k:]
    q = q / (q.norm(p=2, dim=-1, keepdim=True) + 1e-6)
    return original_kmedoids(q, k)


def make_tokens(data, m, n, c, seed):
    """'video': M segments of d = N / 49 frames of 49 tokens, frames of a segment share their
    content (as in the tower: few k-medoids iterations); 'gaussian': i.i.d. N(0, 1) tokens (more)."""
    g = torch.Generator().manual_seed(seed)
    if data == 'gaussian':
        return torch.randn(m, n, c, generator=g)
    content = torch.randn(m, 1, 49, c, generator=g)
    return (content + 0.5 * torch.randn(m, n // 49, 49, c, generator=g)).reshape(m, n, c)


def compare(baseline, ours, repeats, device):
    """Interleaved runs after one warm-up each; returns (median ms baseline, ours, identical, last baseline out)."""
    base_out, ours_out = baseline(), ours()
    identical = True
    base_ms, ours_ms = [], []
    for _ in range(repeats):
        base_out, t = timed(baseline, device)
        base_ms.append(t)
        ours_out, t = timed(ours, device)
        ours_ms.append(t)
        identical &= torch.equal(base_out[0], ours_out[0]) and torch.equal(base_out[1], ours_out[1])
    return statistics.median(base_ms), statistics.median(ours_ms), identical, base_out


def median_ms(fn, device, runs):
    """Median milliseconds of `runs` calls of fn (the first one included)."""
    return statistics.median(timed(fn, device)[1] for _ in range(runs))


def cdist_product(x):
    """A callable running the batched product torch.cdist forms for x (M, N, C): [M, N, C+2]·[M, C+2, N]."""
    left, right = torch.randn(*x.shape[:2], x.shape[2] + 2), torch.randn(*x.shape[:2], x.shape[2] + 2)
    left, right = left.to(x.device), right.to(x.device)
    return lambda: torch.bmm(left, right.transpose(1, 2))


def spectral_stages(x, k, repeats, device):
    """Median ms of each step of batch_spectral on x: affinity, Laplacian, SVD, sign correction and
    normalisation, k-medoids on the embedding."""
    steps = {}
    with torch.no_grad():
        affinity = spectral.graph_affinity(x, 'HeatKernel', 10, 2.0, None)
        laplacian = spectral.normalized_laplacian(affinity)
        u, s, vh = torch.linalg.svd(laplacian, full_matrices=False)
        embedding = spectral.spectral_embedding(affinity, k, True)
        steps["affinity"] = lambda: spectral.graph_affinity(x, 'HeatKernel', 10, 2.0, None)
        steps["laplacian"] = lambda: spectral.normalized_laplacian(affinity)
        steps["svd"] = lambda: torch.linalg.svd(laplacian, full_matrices=False)
        steps["sign + normalise"] = lambda: spectral.sign_corrected(u, s, vh)[:, :, -k:].div(1.0)
        steps["k-medoids"] = lambda: batch_kmedoids(embedding, k)
        return {name: median_ms(fn, device, repeats + 1) for name, fn in steps.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=49)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", nargs="+", default=["video", "gaussian"], choices=["video", "gaussian"])
    parser.add_argument("--skip_spectral", action="store_true")
    parser.add_argument("--stages", action="store_true", help="also time the steps of spectral clustering")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]; CUDA is timed with events")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = dict(machine(device), k=args.k, repeats=args.repeats, kmedoids={}, spectral={}, spectral_stages={})
    print(f"k-medoids, K={args.k}, {describe(results)}, median of {args.repeats}")
    print(f"{'tokens':>9} {'shape':>11} {'iters':>5} {'original ms':>12} {'ours ms':>8} {'speedup':>8} "
          f"{'identical':>9} {'product ms':>10} {'ceiling':>8}")
    for data in args.data:
        for m, n, c in SHAPES:
            x = make_tokens(data, m, n, c, args.seed).to(device)
            base, ours, same, out = compare(lambda: original_kmedoids(x, args.k), lambda: batch_kmedoids(x, args.k),
                                            args.repeats, device)
            product = median_ms(cdist_product(x), device, args.repeats + 1)
            name = f"{m}x{n}x{c}"
            results["kmedoids"][f"{data} {name}"] = dict(original_ms=base, ours_ms=ours, speedup=base / ours,
                                                         identical=same, iterations=out[2], product_ms=product,
                                                         ceiling=base / product)
            print(f"{data:>9} {name:>11} {out[2]:>5} {base:>12.1f} {ours:>8.1f} {base / ours:>7.1f}x {str(same):>9} "
                  f"{product:>10.1f} {base / product:>7.1f}x")
    if not args.skip_spectral:
        print(f"\nspectral (HeatKernel, sign correction), K={args.k}, video tokens")
        print(f"{'shape':>11} {'original ms':>12} {'ours ms':>8} {'speedup':>8} {'identical':>9}")
        for m, n, c in SHAPES:
            x = make_tokens('video', m, n, c, args.seed).to(device)
            base, ours, same, _ = compare(lambda: original_spectral(x, args.k), lambda: batch_spectral(x, args.k),
                                          args.repeats, device)
            name = f"{m}x{n}x{c}"
            results["spectral"][name] = dict(original_ms=base, ours_ms=ours, speedup=base / ours, identical=same)
            print(f"{name:>11} {base:>12.1f} {ours:>8.1f} {base / ours:>7.1f}x {str(same):>9}")
    if args.stages:
        print(f"\nspectral steps (ours), ms: {'shape':>11} " + " | ".join(
            ["affinity", "laplacian", "svd", "sign + normalise", "k-medoids"]))
        for m, n, c in SHAPES:
            stages = spectral_stages(make_tokens('video', m, n, c, args.seed).to(device), args.k, args.repeats, device)
            results["spectral_stages"][f"{m}x{n}x{c}"] = stages
            print(f"{'':>26}{m}x{n}x{c} " + " | ".join(f"{v:.1f}" for v in stages.values()))
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    main()
