"""Tiny CLIP weights in OpenAI's key layout, written by the tests (no download possible here)."""
import math
import warnings

import torch
from torch import nn


def block_tensors(prefix, width, generator):
    """One residual block's weights under `prefix` (e.g. `visual.transformer.resblocks.0.`)."""
    def randn(*shape, std):
        return torch.randn(*shape, generator=generator) * std
    return {
        prefix + "attn.in_proj_weight": randn(3 * width, width, std=width ** -0.5),
        prefix + "attn.in_proj_bias": randn(3 * width, std=0.02),
        prefix + "attn.out_proj.weight": randn(width, width, std=width ** -0.5),
        prefix + "attn.out_proj.bias": randn(width, std=0.02),
        prefix + "ln_1.weight": 1 + randn(width, std=0.1),
        prefix + "ln_1.bias": randn(width, std=0.1),
        prefix + "mlp.c_fc.weight": randn(4 * width, width, std=width ** -0.5),
        prefix + "mlp.c_fc.bias": randn(4 * width, std=0.02),
        prefix + "mlp.c_proj.weight": randn(width, 4 * width, std=(4 * width) ** -0.5),
        prefix + "mlp.c_proj.bias": randn(width, std=0.02),
        prefix + "ln_2.weight": 1 + randn(width, std=0.1),
        prefix + "ln_2.bias": randn(width, std=0.1),
    }


def make_tiny_clip_state_dict(seed=0, width=64, layers=12, patch=32, resolution=224, vocab=49408,
                              context=77, embed_dim=64, text_width=64, text_layers=12, dtype=torch.float32):
    """A random ViT CLIP state dict with OpenAI's keys; heads = width / 64 (one head at width 64)."""
    g = torch.Generator().manual_seed(seed)
    grid = resolution // patch
    sd = {
        "visual.conv1.weight": torch.randn(width, 3, patch, patch, generator=g) * (3 * patch * patch) ** -0.5,
        "visual.class_embedding": torch.randn(width, generator=g) * width ** -0.5,
        "visual.positional_embedding": torch.randn(grid * grid + 1, width, generator=g) * width ** -0.5,
        "visual.ln_pre.weight": 1 + 0.1 * torch.randn(width, generator=g),
        "visual.ln_pre.bias": 0.1 * torch.randn(width, generator=g),
        "visual.ln_post.weight": 1 + 0.1 * torch.randn(width, generator=g),
        "visual.ln_post.bias": 0.1 * torch.randn(width, generator=g),
        "visual.proj": torch.randn(width, embed_dim, generator=g) * width ** -0.5,
        "token_embedding.weight": torch.randn(vocab, text_width, generator=g) * 0.02,
        "positional_embedding": torch.randn(context, text_width, generator=g) * 0.01,
        "ln_final.weight": 1 + 0.1 * torch.randn(text_width, generator=g),
        "ln_final.bias": 0.1 * torch.randn(text_width, generator=g),
        "text_projection": torch.randn(text_width, embed_dim, generator=g) * text_width ** -0.5,
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for i in range(layers):
        sd.update(block_tensors(f"visual.transformer.resblocks.{i}.", width, g))
    for i in range(text_layers):
        sd.update(block_tensors(f"transformer.resblocks.{i}.", text_width, g))
    return {k: v.to(dtype) for k, v in sd.items()}


class TensorTree(nn.Module):
    """A module whose state dict is exactly the given flat dict of tensors (dots become sub-modules)."""

    def __init__(self, tensors):
        super().__init__()
        children = {}
        for key, value in tensors.items():
            head, _, rest = key.partition(".")
            if rest:
                children.setdefault(head, {})[rest] = value
            else:
                self.register_buffer(head, value)
        for name, sub in children.items():
            self.add_module(name, TensorTree(sub))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript_archive(state_dict, path, resolution=224, context=77, vocab=49408):
    """Write `state_dict` as OpenAI ships CLIP: a TorchScript archive that also holds the integer
    entries input_resolution, context_length and vocab_size."""
    extra = {"input_resolution": torch.tensor(resolution), "context_length": torch.tensor(context),
             "vocab_size": torch.tensor(vocab)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, but it is OpenAI's format
        torch.jit.save(torch.jit.script(TensorTree({**state_dict, **extra})), path)
