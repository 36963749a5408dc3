"""X-CLIP's training step as the original computes it (XCLIP_SPEC §4): mixup/cutmix blending of a
micro-batch into soft targets, the three losses its main.py chooses from, the frozen text tower,
and the forward/backward of one optimizer step with accumulation.

    loss = recognition_loss(num_classes=K, mixup=0.8, cutmix=1.0, switch_prob=0.5, label_smooth=0.1)
    freeze_text_tower(model)                      # --fix_text 1, before building the optimizer
    step_loss = recognition_backward(model, micro_batches, text_ids, loss, accumulation=A,
                                     autocast=autocast, scaler=scaler)

Random draws follow the original exactly, so the same RNG states give the same batch: the
cutmix-or-mixup switch from numpy's global RNG, the permutation, λ (torch's Beta) and the box centre
from torch's global CPU generator, in the original's order. They are drawn on the CPU even for CUDA
batches, as the original's are.
"""
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributions import Beta
from torch.nn.parallel import DistributedDataParallel

# With a frozen text tower (MODEL.FIX_TEXT) only names containing one of these train.
TRAINED_WITH_FROZEN_TEXT = ("visual.", "mit", "prompts")
LOSS_KINDS = ("mixup_soft_target", "label_smoothing", "cross_entropy")


def freeze_text_tower(model):
    """--fix_text 1: every parameter whose name contains none of `visual.`, `mit`, `prompts` stops
    requiring gradients (token and positional embeddings, text blocks, ln_final, text_projection,
    logit_scale). Returns the frozen names. Call it before building the optimizer and DDP."""
    frozen = []
    for name, param in model.named_parameters():
        if not any(part in name for part in TRAINED_WITH_FROZEN_TEXT):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def smoothed_one_hot(labels, num_classes, smoothing):
    """labels [B] int -> targets [B, K] float32: 1 − s + s/K at the label, s/K elsewhere."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), on)


@dataclass(frozen=True)
class Blend:
    """The draws of one blending: video b becomes a mix of itself (weight `lam`) and video
    `permutation[b]`; cutmix pastes the partner into `box` = (x1, y1, x2, y2), pixels, ends exclusive."""
    kind: str  # "cutmix" or "mixup"
    lam: torch.Tensor  # 0-dim float32; for cutmix the share of the frame left uncovered
    permutation: torch.Tensor  # [B] int64
    box: tuple[int, int, int, int] | None = None


class MixupCutmix:
    """The original's CutmixMixupBlending: per micro-batch, cutmix with probability `switch_prob`,
    else mixup; labels become smoothed one-hot targets blended with the same weight.

    Called on (video [B, T, 3, H, W], labels [B]) -> (video [B, T, 3, H, W], targets [B, K] float32);
    the input video is not modified (the original overwrote it in place).
    """

    def __init__(self, num_classes, *, smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5):
        for flag, alpha in (("--mixup", mixup_alpha), ("--cutmix", cutmix_alpha)):
            if alpha <= 0:
                raise ValueError(f"{flag} {alpha}: with mixup on, both Beta parameters must be > 0 (the original "
                                 "fails on this too); pass --mixup 0 to train without blending")
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.switch_prob = switch_prob
        self.mixup_beta = Beta(torch.tensor(float(mixup_alpha)), torch.tensor(float(mixup_alpha)))
        self.cutmix_beta = Beta(torch.tensor(float(cutmix_alpha)), torch.tensor(float(cutmix_alpha)))

    def draw(self, batch_size, height, width):
        """The random part, in the original's order: numpy's switch; cutmix: permutation, λ, box
        centre x, then y; mixup: λ, then the permutation."""
        if np.random.rand() < self.switch_prob:
            permutation = torch.randperm(batch_size)
            lam = self.cutmix_beta.sample()
            box = self.cutmix_box(lam, height, width)
            x1, y1, x2, y2 = box
            covered = torch.tensor(float((x2 - x1) * (y2 - y1))) / (width * height)  # float32, as the original
            return Blend("cutmix", 1 - covered, permutation, box)
        lam = self.mixup_beta.sample()
        return Blend("mixup", lam, torch.randperm(batch_size))

    @staticmethod
    def cutmix_box(lam, height, width):
        """A box of sides int(W·√(1−λ)) x int(H·√(1−λ)) (float32) around a uniform centre, clipped
        to the frame -> (x1, y1, x2, y2)."""
        cut = torch.sqrt(1.0 - lam)
        cut_w, cut_h = int(width * cut), int(height * cut)
        cx = int(torch.randint(width, (1,))[0])
        cy = int(torch.randint(height, (1,))[0])
        inside = lambda value, size: min(max(value, 0), size)
        return (inside(cx - cut_w // 2, width), inside(cy - cut_h // 2, height),
                inside(cx + cut_w // 2, width), inside(cy + cut_h // 2, height))

    @staticmethod
    def apply(video, targets, blend):
        """Blend video [B, T, 3, H, W] and targets [B, K] with the draws of `blend`."""
        permutation = blend.permutation.to(video.device)
        lam = blend.lam.to(video.device)
        if blend.kind == "cutmix":
            x1, y1, x2, y2 = blend.box
            video = video.clone()
            video[..., y1:y2, x1:x2] = video[permutation][..., y1:y2, x1:x2]  # every frame and channel
        else:
            video = lam * video + (1 - lam) * video[permutation]
        return video, lam * targets + (1 - lam) * targets[permutation]

    def __call__(self, video, labels):
        targets = smoothed_one_hot(labels, self.num_classes, self.smoothing)
        blend = self.draw(video.shape[0], video.shape[-2], video.shape[-1])
        return self.apply(video, targets, blend)


def soft_target_cross_entropy(logits, targets):
    """logits [B, K], targets [B, K] -> batch mean of Σ_k −targets·log_softmax(logits)."""
    return (-targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def label_smoothing_cross_entropy(logits, labels, smoothing):
    """timm's LabelSmoothingCrossEntropy: batch mean of (1 − s)·(−log p_label) + s·mean_k(−log p_k)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, K)
    nll = -log_probs.gather(dim=-1, index=labels.long().view(-1, 1)).squeeze(1)  # (B,)
    uniform = -log_probs.mean(dim=-1)  # (B,)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


@dataclass
class RecognitionLoss:
    """The original's criterion with its batch preparation (see `recognition_loss`)."""
    kind: str  # one of LOSS_KINDS
    blend: MixupCutmix | None = None
    smoothing: float = 0.0

    def prepare(self, video, labels):
        """(video, labels [B]) -> (video, targets): blended soft targets [B, K] with mixup, else the labels."""
        return self.blend(video, labels) if self.blend is not None else (video, labels)

    def __call__(self, logits, targets):
        if self.kind == "mixup_soft_target":
            return soft_target_cross_entropy(logits, targets)
        if self.kind == "label_smoothing":
            return label_smoothing_cross_entropy(logits, targets, self.smoothing)
        return F.cross_entropy(logits.float(), targets)


def recognition_loss(num_classes, *, mixup, cutmix, switch_prob, label_smooth):
    """As the original's main.py: --mixup > 0 -> mixup/cutmix blending (smoothing --label_smooth) and
    soft-target cross-entropy; else --label_smooth > 0 -> label-smoothing cross-entropy; else CE."""
    if not 0.0 <= label_smooth < 1.0:
        raise ValueError(f"--label_smooth must be in [0, 1), got {label_smooth}")
    if mixup > 0:
        blend = MixupCutmix(num_classes, smoothing=label_smooth, mixup_alpha=mixup, cutmix_alpha=cutmix,
                            switch_prob=switch_prob)
        return RecognitionLoss("mixup_soft_target", blend=blend)
    if label_smooth > 0:
        return RecognitionLoss("label_smoothing", smoothing=label_smooth)
    return RecognitionLoss("cross_entropy")


def recognition_backward(model, micro_batches, text_ids, loss, *, accumulation, autocast, scaler):
    """Forward and backward of one optimizer step, as the original's train_one_epoch: for each
    micro-batch (video [B, T, 3, H, W], labels [B], ...): blend, forward, loss / A, backward, the
    gradients adding up over the A micro-batches (DDP synchronises on the last one only).

    Returns the step's loss (detached): Σ micro-batch losses / A. A micro-batch whose loss is not
    finite gets no backward; the returned loss is then not finite either.
    """
    if len(micro_batches) != accumulation:
        raise ValueError(f"X-CLIP steps on exactly {accumulation} micro-batches (--gradient_accumulation_steps); "
                         f"got {len(micro_batches)}: an epoch's leftover micro-batches must be dropped")
    total = 0.0
    for i, (video, labels, *_) in enumerate(micro_batches):
        video, targets = loss.prepare(video, labels)
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else nullcontext()
        with sync:
            with autocast():
                logits = model(video, text_ids)  # (B, K)
            value = loss(logits, targets) / accumulation
            if torch.isfinite(value):
                scaler.scale(value).backward()
        total = total + value.detach()
    return total
