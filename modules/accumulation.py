"""Gradient accumulation that equals one large batch, for a contrastive loss.

InfoNCE over a batch is not the mean of InfoNCE over its parts, so summing micro-batch gradients
(the usual accumulation) trains with a smaller contrastive batch than --batch_size says. Instead
(gradient caching): encode every micro-batch without gradient, compute the loss of the whole batch
on those features and its gradient with respect to them and to the head, then re-encode each
micro-batch with gradient and back-propagate the cached feature gradients. The gradients are
those of one batch of the full size; the memory is that of one micro-batch plus the features.
"""
from collections import namedtuple
from contextlib import contextmanager, nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel

CachedGrads = namedtuple("CachedGrads", ["text", "visual", "heads"])


@contextmanager
def same_randomness(state):
    """Re-run a forward with the RNG state of its first run (sparse sampling draws offsets)."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
        yield


def rng_state():
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def accumulated_backward(model, micro_batches, autocast, scaler):
    """Backward of the loss of `micro_batches` taken as one batch; returns the (unscaled) loss.

    model: the RetrievalModel, or its DistributedDataParallel wrapper (gradients are synchronised
    once, on the last micro-batch)."""
    plain = model.module if isinstance(model, DistributedDataParallel) else model
    states, texts, visuals, masks = [], [], [], []
    with torch.no_grad():
        for input_ids, _, _, video, video_mask in micro_batches:
            states.append(rng_state())
            with autocast():
                texts.append(plain.encode_text(input_ids))
                visual, mask = plain.encode_video(video, video_mask)
            visuals.append(visual)
            masks.append(mask)
    text = torch.cat(texts).requires_grad_()
    visual = torch.cat(visuals).requires_grad_()
    with autocast():
        loss = plain.contrastive_loss(text, visual, torch.cat(masks))
    if not torch.isfinite(loss):
        return loss
    heads = plain.head_parameters()
    grads = torch.autograd.grad(scaler.scale(loss), [text, visual] + heads, allow_unused=True)
    heads_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(heads, grads[2:])]
    text_grads = grads[0].split([len(t) for t in texts])
    visual_grads = grads[1].split([len(v) for v in visuals])
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        cached = CachedGrads(text_grads[i], visual_grads[i], heads_grads if last else None)
        sync = nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            with same_randomness(states[i]), autocast():
                surrogate = model(*batch, cached_grads=cached)
            surrogate.backward()
    return loss.detach()
