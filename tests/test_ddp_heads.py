"""Two real gloo processes with DistributedDataParallel(find_unused_parameters=False): every head trains
for two steps (tightTransf used to stop at step 2, "Expected to have finished reduction...", its
logit_scale being unused), and the first step's gradients equal the in-process simulation of
tests/simulated_ranks.py that the comparisons with the original rely on."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.simulated_ranks import rank_slices, simulate_ranks
from tests.test_retrieval_training import make_model, small_batch
from tests.tiny_clip import make_tiny_clip_state_dict

HEADS = ("seqTransf", "tightTransf")


def tiny_model(sim_header):
    return make_model(make_tiny_clip_state_dict(layers=2, text_layers=2, resolution=64), sim_header).train()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank, port, out_path):
    """Rank `rank` of 2: two AdamW steps per head; rank 0 saves the first step's losses and gradients."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for head in HEADS:
        model = tiny_model(head)
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        part = rank_slices(small_batch(), 2)[rank]
        for step in range(2):
            torch.manual_seed(100 * step + rank)
            loss = ddp(*part)
            loss.backward()
            if step == 0:
                losses = [torch.zeros(()) for _ in range(2)]
                dist.all_gather(losses, loss.detach())
                grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                results[head] = ([x.item() for x in losses], grads)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ddp") / "results.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(ddp_worker, args=(free_port(), path), nprocs=2, join=True)
    return torch.load(path)


@pytest.mark.parametrize("head", HEADS)
def test_ddp_two_steps_match_the_simulation(ddp_results, head, monkeypatch):
    losses, grads = ddp_results[head]
    expected_losses, expected = simulate_ranks(tiny_model(head), small_batch(), 2, monkeypatch, seed=0)
    assert losses == pytest.approx(expected_losses, abs=1e-6)
    assert set(grads) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
