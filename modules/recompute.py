"""Lean backward: recompute cheap tensors in the backward pass instead of keeping them.

Autograd keeps every tensor an op saves for its backward. In a CLIP block two kinds are cheap to
get again from a tensor that is kept anyway:
  * a LayerNorm's output, which the next linear layer saves, from the LayerNorm's input, which the
    LayerNorm itself saves;
  * the MLP activation's output (saved by c_proj) and its internals (QuickGELU's sigmoid), from the
    activation's input (which the activation saves).
`then(fn, x, consumer)` computes consumer(fn(x)) and stores, instead of those tensors, a note to
recompute them: on the first use in the backward pass fn(x) runs once more, with the same kernels
on the same input, so the recomputed tensors are bit-identical and autograd's own backward formulas
give the same gradients. Per block this keeps 10 W-wide values per token instead of 20 (tests/test_recompute.py).

Only the tensors written by fn are recomputed (never the consumer's matrix products). Outside
gradient mode, or when a block turns it off (`set_lean_backward`), it is a plain call.
"""
import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks


class _Recomputable:
    """The saved tensors of fn(x) and of its output's consumer that can be recomputed from x."""

    def __init__(self, fn, x):
        self.fn, self.x, self.version = fn, x, x._version
        device = x.device.type
        self.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        self.count = 0  # tensors fn's ops saved so far, in order
        self.output_storage = None
        self.saved = None  # after recomputing: fn's saved tensors in the order they were saved
        self.output = None

    def pack_inner(self, t):
        """Tensors fn's ops save: keep x itself and small ones (weights, statistics), note the rest."""
        index, self.count = self.count, self.count + 1
        if t.untyped_storage().data_ptr() == self.x.untyped_storage().data_ptr() or t.numel() < self.x.numel():
            return t
        return self, index

    def pack_outer(self, t):
        """Tensors the consumer saves: note fn's output (or a view of it), keep the rest."""
        if t.untyped_storage().data_ptr() != self.output_storage:
            return t
        return self, (t.size(), t.stride(), t.storage_offset())

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        _, key = packed
        if self.saved is None:
            self._recompute()
        if isinstance(key, int):
            return self.saved[key]
        size, stride, offset = key
        return self.output.as_strided(size, stride, offset)

    def _recompute(self):
        if self.x._version != self.version:
            raise RuntimeError("lean backward: the input of a recomputed layer was modified in place after the "
                               "forward pass; its saved tensors cannot be recomputed")
        saved = []

        def capture(t):
            saved.append(t.detach())
            return None  # the recomputed graph is never run; keeping t in it would make a cycle through t.grad_fn

        x = self.x.detach().requires_grad_(self.x.requires_grad)
        device, dtype, enabled = self.autocast  # the forward pass's autocast state, as the backward does not keep it
        with torch.enable_grad(), torch.autocast(device, dtype, enabled), saved_tensors_hooks(capture, lambda _: None):
            output = self.fn(x)
        if len(saved) != self.count:
            raise RuntimeError(f"lean backward: recomputing saved {len(saved)} tensors, the forward pass {self.count}")
        self.saved, self.output = saved, output.detach()


def then(fn, x, consumer, lean=True):
    """consumer(fn(x)), keeping for backward only what fn(x) cannot cheaply give again (module doc);
    with `lean` False, or outside gradient mode, a plain call."""
    if not (lean and torch.is_grad_enabled()):
        return consumer(fn(x))
    state = _Recomputable(fn, x)
    with saved_tensors_hooks(state.pack_inner, state.unpack):
        y = fn(x)
    state.output_storage = y.untyped_storage().data_ptr()
    with saved_tensors_hooks(state.pack_outer, state.unpack):
        return consumer(y)


def set_lean_backward(model: nn.Module, enabled: bool):
    """Turn the lean backward of every CLIP block in `model` on (the default) or off (plain autograd)."""
    for module in model.modules():
        if hasattr(module, "lean_backward"):
            module.lean_backward = enabled
