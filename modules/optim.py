"""Optimizers, learning-rate schedules and parameter groups of the original (SPEC §7)."""
import math

import torch
from torch.nn.utils import clip_grad_norm_

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
MIN_LR = 1e-8


def warmup_cosine(progress, warmup):
    """BertAdam's schedule multiplier at progress = step / total."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, weight decay added to the update, each parameter's gradient
    clipped to norm `max_grad_norm`, and the `warmup_cosine` schedule over `t_total` steps."""

    def __init__(self, params, lr, warmup=-1.0, t_total=-1, b1=0.9, b2=0.999, e=1e-6, weight_decay=0.01,
                 max_grad_norm=1.0):
        defaults = dict(lr=lr, warmup=warmup, t_total=t_total, b1=b1, b2=b2, e=e, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    def scheduled_lr(self, group, step):
        if group["t_total"] == -1:
            return group["lr"]
        return group["lr"] * warmup_cosine(step / group["t_total"], group["warmup"])

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                if group["max_grad_norm"] > 0:
                    clip_grad_norm_(p, group["max_grad_norm"])
                grad = p.grad
                state["next_m"].mul_(group["b1"]).add_(grad, alpha=1 - group["b1"])
                state["next_v"].mul_(group["b2"]).addcmul_(grad, grad, value=1 - group["b2"])
                update = state["next_m"] / (state["next_v"].sqrt() + group["e"])
                if group["weight_decay"] > 0.0:
                    update += group["weight_decay"] * p
                p.add_(-self.scheduled_lr(group, state["step"]) * update)
                state["step"] += 1


def cosine_with_warmup(step, total_steps, warmup_steps, lr):
    """AdamW's per-step lr: linear from MIN_LR to lr over warm-up, then cosine to zero, floored."""
    if step < warmup_steps:
        return MIN_LR + (lr - MIN_LR) * step / warmup_steps
    rest = max(total_steps - warmup_steps, 1)
    return max(0.5 * lr * (1 + math.cos(math.pi * (step - warmup_steps) / rest)), MIN_LR)


class CosineSchedule:
    """Sets every group's lr to cosine_with_warmup(step) x the group's multiplier."""

    def __init__(self, optimizer, lr, total_steps, warmup_proportion):
        self.optimizer = optimizer
        self.lr = lr
        self.total_steps = total_steps
        self.warmup_steps = int(warmup_proportion * total_steps)

    def set_step(self, step):
        base = cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = base * group["lr_multiplier"]
        return base


def parameter_groups(model, lr, coef_lr, weight_decay, new_added_modules):
    """Four groups: (decay | no decay) x (CLIP at lr*coef_lr | new modules at lr).

    No decay for names containing `bias`, `LayerNorm.bias`, `LayerNorm.weight` (CLIP's `ln_*`
    weights are decayed, as in the original). CLIP = `clip.` in the name, except names containing
    one of `new_added_modules`.
    """
    groups = {(decay, is_clip): [] for decay in (True, False) for is_clip in (True, False)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not any(nd in name for nd in NO_DECAY)
        is_clip = "clip." in name and not any(m in name for m in new_added_modules)
        groups[(decay, is_clip)].append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "lr": lr * (coef_lr if is_clip else 1.0), "lr_multiplier": coef_lr if is_clip else 1.0}
            for (decay, is_clip), params in groups.items() if params]


def build_optimizer(model, optim, lr, coef_lr, weight_decay, betas, eps, total_steps, warmup_proportion,
                    new_added_modules):
    """-> (optimizer, schedule or None). BertAdam schedules itself; AdamW gets a CosineSchedule."""
    groups = parameter_groups(model, lr, coef_lr, weight_decay, new_added_modules)
    if optim == "BertAdam":
        optimizer = BertAdam(groups, lr=lr, warmup=warmup_proportion, t_total=total_steps, b1=betas[0],
                             b2=betas[1], e=eps, weight_decay=weight_decay, max_grad_norm=1.0)
        return optimizer, None
    if optim == "AdamW":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        return optimizer, CosineSchedule(optimizer, lr, total_steps, warmup_proportion)
    raise ValueError(f"--optim {optim} is unknown; choose BertAdam or AdamW")


def freeze_clip_layers(clip, freeze_layer_num, freeze_all=False):
    """Freeze CLIP blocks below `freeze_layer_num` and the embeddings; the output layers
    (ln_final, text_projection, logit_scale, visual.ln_post, visual.proj) always train; -1 freezes
    nothing. `freeze_all` (--freeze_clip 1) freezes every CLIP weight. Cluster tables always train."""
    always_train = ("ln_final.", "text_projection", "logit_scale", "visual.ln_post.", "visual.proj")
    for name, param in clip.named_parameters():
        if "tokencluster_inter." in name:
            continue
        if freeze_all:
            param.requires_grad = False
            continue
        if freeze_layer_num < 0 or name.startswith(always_train):
            continue
        if ".resblocks." in name and int(name.split(".resblocks.")[1].split(".")[0]) >= freeze_layer_num:
            continue
        param.requires_grad = False
