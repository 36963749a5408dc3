"""Several DDP processes simulated in one: each rank's training step on its slice of the batch with
`all_gather_with_local_grad`'s semantics (every rank's tensors, only the local slice carrying a
gradient), and the gradients averaged as DistributedDataParallel averages them."""
import torch

from modules import retrieval


class SimulatedGather:
    """all_gather_with_local_grad of rank `rank`: call i returns every rank's tensor of that call in
    rank order, this rank's own in its slot (so only it carries a gradient), the others' recorded."""

    def __init__(self, rank, recorded):
        self.rank, self.recorded, self.calls = rank, recorded, 0

    def __call__(self, x):
        parts = [x if r == self.rank else calls[self.calls] for r, calls in enumerate(self.recorded)]
        self.calls += 1
        return torch.cat(parts)


def rank_slices(batch, world):
    per_rank = batch[0].shape[0] // world
    return [tuple(t[r * per_rank:(r + 1) * per_rank] for t in batch) for r in range(world)]


def record_contributions(model, part, monkeypatch):
    """The tensors a rank passes to each gather call, in call order (forward without gradient)."""
    calls = []
    monkeypatch.setattr(retrieval, "all_gather_with_local_grad", lambda x: calls.append(x.detach()) or x)
    with torch.no_grad():
        model(*part)
    return calls


def simulate_ranks(model, batch, world, monkeypatch, seed=0):
    """Returns (loss of each rank, name -> gradient averaged over ranks). torch.manual_seed(seed + rank)
    runs before each rank's step (the dropout of the tight head)."""
    slices = rank_slices(batch, world)
    recorded = [record_contributions(model, part, monkeypatch) for part in slices]
    losses, grads = [], []
    for rank, part in enumerate(slices):
        monkeypatch.setattr(retrieval, "all_gather_with_local_grad", SimulatedGather(rank, recorded))
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed + rank)
        loss = model(*part)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return losses, {n: sum(g[n] for g in grads) / world for n in grads[0]}
