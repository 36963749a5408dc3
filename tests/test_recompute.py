"""Lean backward (modules/recompute.py): the same numbers as plain autograd, bit for bit, while keeping
fewer tensors for backward; an input changed in place is refused."""
import pytest
import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

import params
from modules import recompute
from modules.clip import LayerNorm, ResidualAttentionBlock
from modules.factory import create_model
from modules.recompute import set_lean_backward, then
from modules.xclip import build_xclip
from tests.test_retrieval import make_batch
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_datasets import SCHEDULE


def step(model, lean, inputs, loss_fn):
    """Loss and every gradient (inputs' included) of one backward with lean backward on or off."""
    set_lean_backward(model, lean)
    model.zero_grad(set_to_none=True)
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    loss = loss_fn(model, *leaves)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    grads.update({f"input{i}": t.grad for i, t in enumerate(leaves) if t.grad is not None})
    return loss.detach(), grads


def assert_identical(model, inputs, loss_fn):
    plain_loss, plain = step(model, False, inputs, loss_fn)
    lean_loss, lean = step(model, True, inputs, loss_fn)
    assert torch.equal(plain_loss, lean_loss)
    assert plain.keys() == lean.keys() and len(plain) > 0
    different = [name for name in plain if not torch.equal(plain[name], lean[name])]
    assert different == []


def weighted_sum(model, *inputs):
    out = model(*inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return (out * weights).sum()


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("causal", [False, True])
def test_block_gradients_are_bit_identical(activation, causal):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 2, activation)
    x = torch.randn(6, 20, 64)
    mask = torch.full((20, 20), float("-inf")).triu(1) if causal else None
    assert_identical(block, [x], lambda m, x: weighted_sum(lambda t: m(t, mask), x))


def test_clustered_retrieval_step_is_bit_identical(tmp_path):
    """The whole model: text tower (causal mask), image tower with k-medoids clustering, meanP loss."""
    args = params.get_args(["--output_dir", str(tmp_path), "--max_frames", "4", *SCHEDULE])
    model = create_model(args, make_tiny_clip_state_dict(seed=1, layers=12, text_layers=2)).train()
    assert_identical(model, make_batch(B=3, T=4), lambda m, *batch: m(*batch))


def test_xclip_step_with_drop_path_is_bit_identical():
    """X-CLIP's cross-frame blocks (message token appended and dropped), drop path re-seeded per run."""
    model = build_xclip(make_tiny_clip_state_dict(seed=2, layers=2, text_layers=2, resolution=64), 4,
                        drop_path_rate=0.2, seed=0).train()
    video = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    text = torch.randint(1, 400, (3, 77), generator=torch.Generator().manual_seed(4))

    def loss(m, video):
        torch.manual_seed(5)  # the same drop-path draws in both runs
        return weighted_sum(lambda v: m(v, text), video)

    assert_identical(model, [video], loss)


def test_autocast_bfloat16_is_bit_identical():
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 1)
    x = torch.randn(4, 10, 64)

    def loss(m, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return weighted_sum(m, x).float()

    assert_identical(block, [x], loss)


def kept_per_token(block, x, lean, monkeypatch):
    """W-wide values kept for backward per token: bytes of the distinct storages saved, parameters
    excluded, over rows · tokens · W · 4."""
    parameters = {p.untyped_storage().data_ptr() for p in block.parameters()}
    kept = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()

    def recording(pack):
        def record(self, t):
            packed = pack(self, t)
            if isinstance(packed, torch.Tensor):
                keep(packed)
            return packed
        return record

    set_lean_backward(block, lean)
    if lean:
        monkeypatch.setattr(recompute._Recomputable, "pack_inner", recording(recompute._Recomputable.pack_inner))
        monkeypatch.setattr(recompute._Recomputable, "pack_outer", recording(recompute._Recomputable.pack_outer))
        block(x)
    else:
        with saved_tensors_hooks(lambda t: keep(t) or t, lambda t: t):
            block(x)
    monkeypatch.undo()
    return sum(kept.values()) / x.numel() / 4


def test_keeps_10_values_per_token_instead_of_20(monkeypatch):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 1)
    x = torch.randn(8, 50, 64, requires_grad=True) * 1.0
    plain, lean = kept_per_token(block, x, False, monkeypatch), kept_per_token(block, x, True, monkeypatch)
    # plain: ln_1 in/out, q/k/v, attention out, ln_2 in/out, c_fc out, sigmoid, activation out
    # (1 + 1 + 3 + 1 + 1 + 1 + 4 + 4 + 4 = 20 W), plus per-token statistics (LayerNorm mean/rstd, logsumexp)
    assert 20 <= plain < 20.2
    assert 10 <= lean < 10.2  # without ln_1/ln_2 outputs, sigmoid, activation output


def test_an_input_changed_in_place_is_refused():
    norm, linear = LayerNorm(16), nn.Linear(16, 16)
    x = torch.randn(3, 16, requires_grad=True) * 1.0
    y = then(norm, x, linear)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_clustering_keeps_only_the_medoid_indices(tmp_path):
    """k-medoids at block 6 (12 frames -> 4 segments): the medoid tokens are read from the residual
    stream with one index_select; its output and gradient equal a gather from the segment-major
    copy, bit for bit, and backward keeps only the indices (not that copy, as large as x)."""
    args = params.get_args(["--output_dir", str(tmp_path), "--max_frames", "12", "--cluster_inter", "1",
                            "--cluster_num_blocks", *["49"] * 12, "--target_frames_blocks", *["12"] * 6, *["4"] * 6])
    model = create_model(args, make_tiny_clip_state_dict(seed=1, layers=12, text_layers=2))
    cluster = model.clip.visual.transformer.resblocks[6].tokencluster_inter
    x = torch.randn(2 * 12, 50, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    kept = []
    with saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = cluster(x)
    assert [t.dtype for t in kept] == [torch.int64] and kept[0].numel() == 2 * 4 * 49
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((out * weights).sum(), x, retain_graph=True)  # out[:, :1] is used again

    medoids = cluster.medoid_indices(x).transpose(0, 1).reshape(-1, 49)  # (M, K), row s·B + b
    tokens = cluster._segment_tokens(x)  # (M, N, W)
    gathered = tokens.gather(1, medoids.unsqueeze(-1).expand(-1, -1, 64))
    gathered = gathered.reshape(4, 2, 49, 64).transpose(0, 1).reshape(8, 49, 64)
    assert torch.equal(out[:, 1:], gathered)
    (gather_grad,) = torch.autograd.grad((out[:, :1] * weights[:, :1]).sum() + (gathered * weights[:, 1:]).sum(), x)
    assert torch.equal(grad, gather_grad)


def test_nothing_is_left_behind_after_backward(monkeypatch):
    """The recomputed tensors and the notes are freed with the graph (no reference cycle through an
    autograd node that would keep them, and the memory, for good)."""
    import gc
    import weakref
    alive = []
    recompute_once = recompute._Recomputable._recompute

    def recording(self):
        recompute_once(self)
        alive.extend(weakref.ref(t) for t in self.saved + [self.output])
        alive.append(weakref.ref(self))

    monkeypatch.setattr(recompute._Recomputable, "_recompute", recording)
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 1)
    block(torch.randn(4, 10, 64, requires_grad=True)).sum().backward()
    gc.collect()
    assert len(alive) > 6 and all(ref() is None for ref in alive)


def test_xclip_use_checkpoint_recomputes_two_of_three_segments_with_the_same_numbers():
    """--use_checkpoint (TRAIN.USE_CHECKPOINT): 6 blocks in 3 segments, the first two run again in
    backward; loss and gradients equal those of the run without it, drop path included."""
    model = build_xclip(make_tiny_clip_state_dict(seed=2, layers=6, text_layers=2, resolution=64), 4,
                        drop_path_rate=0.2, seed=0).train()
    video = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    text = torch.randint(1, 400, (3, 77), generator=torch.Generator().manual_seed(4))

    def loss(m, video):
        torch.manual_seed(5)
        return weighted_sum(lambda v: m(v, text), video)

    expected_loss, expected = step(model, True, [video], loss)
    model.visual.use_checkpoint()
    calls = [0] * 6
    for j, block in enumerate(model.visual.transformer.resblocks):
        block.register_forward_pre_hook(lambda *_, j=j: calls.__setitem__(j, calls[j] + 1))  # runs started
    model.zero_grad(set_to_none=True)
    leaf = video.clone().requires_grad_(True)
    checkpointed_loss = loss(model, leaf)
    checkpointed_loss.backward()
    assert calls == [2, 2, 2, 2, 1, 1]
    assert model.visual.checkpoint_segments == 3
    assert torch.equal(checkpointed_loss.detach(), expected_loss)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    grads["input0"] = leaf.grad
    assert grads.keys() == expected.keys()
    assert [name for name in grads if not torch.equal(grads[name], expected[name])] == []
