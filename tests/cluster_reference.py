"""Plain references for the clustering tests, written from SPEC §3 with loops and the original's
`[M, K, N, N]` medoid cost (fine at test sizes). Slow on purpose: obviously correct is the point."""
import torch


def first_argmin(values):
    best = 0
    for i, v in enumerate(values):
        if v < values[best]:
            best = i
    return best


def first_argmax(values):
    return first_argmin([-v for v in values])


def shifted_distances(x, distance, norm_p):
    """Δ[m, a, b], a = medoid/candidate, shifted below -1 over the whole batch, diagonal 1 lower."""
    if distance == 'euclidean':
        dist = torch.cdist(x, x, p=norm_p)
    else:
        x_hat = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
        dist = 1.0 - torch.bmm(x_hat, x_hat.transpose(1, 2))
    dist = dist - dist.max() - 1.0
    for i in range(x.shape[1]):
        dist[:, i, i] -= 1.0
    return dist


def assign(dist_rows, medoids, n):
    """dist_rows: nested lists Δ[a][b] of one sample; token b goes to the first nearest medoid."""
    return [first_argmin([dist_rows[a][b] for a in medoids]) for b in range(n)]


def reference_kmedoids(x, k, distance='euclidean', norm_p=2.0, pre_norm=False, threshold=1e-5, iter_limit=100):
    """SPEC §3 steps 1-5 for x (M, N, C). Returns (assignment (M, N), medoids (M, k)) int64."""
    x = x.float()
    if pre_norm:
        x = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
    dist = shifted_distances(x, distance, norm_p)
    m_count, n = x.shape[:2]
    rows = dist.tolist()
    norms = x.norm(dim=-1).tolist()
    medoids = []
    for m in range(m_count):  # KKZ, recomputing the min over all chosen seeds every time
        seeds = [first_argmax(norms[m])]
        while len(seeds) < k:
            seeds.append(first_argmax([min(rows[m][a][b] for a in seeds) for b in range(n)]))
        medoids.append(seeds)
    batch = torch.arange(m_count).unsqueeze(1)
    for _ in range(iter_limit):
        assignment = torch.tensor([assign(rows[m], medoids[m], n) for m in range(m_count)])
        mask = assignment.unsqueeze(1) == torch.arange(k).view(1, k, 1)  # (M, K, N)
        cost = (dist.unsqueeze(1) * mask.unsqueeze(-1) * mask.unsqueeze(-2)).sum(-1)  # (M, K, N, N) -> (M, K, N)
        new = [[first_argmin(cost[m, j].tolist()) for j in range(k)] for m in range(m_count)]
        old_t, new_t = torch.tensor(medoids), torch.tensor(new)
        shift = (x[batch, new_t] - x[batch, old_t]).pow(2).sum(-1).sqrt().sum(-1).mean()
        medoids = new
        if shift < threshold:
            break
    medoids = [sorted(row) for row in medoids]
    assignment = [assign(rows[m], medoids[m], n) for m in range(m_count)]
    return torch.tensor(assignment), torch.tensor(medoids)


def reference_spg(tokens_per_frame, frames, wide):
    """The spatio-temporal mask by enumerating each token's neighbours, as the original does."""
    n, g = tokens_per_frame, int(tokens_per_frame ** 0.5)
    half_s = 9 if wide else 4
    total = n * frames
    graph = torch.zeros(total, total)
    for i in range(total):
        t, h, w = i // n, (i % n) // g, (i % n) % g
        for tt in range(t - 3, t + 4):
            for y in range(h - half_s, h + half_s + 1):
                for xx in range(w - half_s, w + half_s + 1):
                    if 0 <= tt < frames and 0 <= y < g and 0 <= xx < g:
                        graph[i, tt * n + y * g + xx] = 1
    return graph.unsqueeze(0)


def reference_spectral(x, k, graph='HeatKernel', knn_k=10, sigma=2.0, distance='euclidean', norm_p=2.0,
                       threshold=1e-5, iter_limit=100, correct_sign=True, spg=None):
    """SPEC §3 spectral clustering in the original's operation order (Laplacian by two bmm's)."""
    x = x.float()
    sq = x.pow(2).sum(-1, keepdim=True)
    d2 = torch.baddbmm(sq.transpose(1, 2), x, x.transpose(1, 2), alpha=-2).add(sq)
    a = torch.exp(-1.0 * d2 / (2 * sigma ** 2))
    if graph == 'KNN':
        kth = torch.topk(a, knn_k, dim=-1).values[:, :, -1:]
        keep = a >= kth
        a = a * torch.logical_or(keep, keep.transpose(1, 2))
    if spg is not None:
        a = a * spg
    deg = a.sum(-1)
    lap = torch.diag_embed(deg) - a
    inv = torch.diag_embed(torch.pow(deg, -0.5))
    lap = torch.bmm(torch.bmm(inv, lap), inv)
    u, s, vh = torch.linalg.svd(lap, full_matrices=False)
    if correct_sign:
        y = s.unsqueeze(-1) * vh
        u = torch.sign(torch.sum(torch.sign(y) * torch.square(y), dim=2)).unsqueeze(1) * u
    q = u[:, :, -k:]
    q = q / (q.norm(p=2, dim=-1, keepdim=True) + 1e-6)
    return reference_kmedoids(q, k, distance, norm_p, False, threshold, iter_limit)
