"""One autocast context for every precision and device (`amp`: fp16 on CUDA, bf16 on CPU)."""
from contextlib import nullcontext

import torch

PRECISIONS = ("amp", "fp16", "fp32")


def autocast_context(precision, device):
    """A zero-argument factory of the forward pass's autocast context."""
    if precision != "amp":
        return nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision, device):
    """A GradScaler that only scales for fp16 autocast on CUDA; disabled (a no-op) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "amp" and device.type == "cuda")
