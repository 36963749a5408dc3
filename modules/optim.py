"""Optimizers, learning-rate schedules and parameter groups of the original (SPEC §7)."""
import math

import torch
from torch.nn.utils import clip_grad_norm_

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
# Modules that live under `clip.` but are new, so they train at lr instead of lr·coef_lr (the
# original's list; params.py imports it). The cluster tables (`tokencluster_inter`) are not among them.
NEW_ADDED_MODULES = ("time_embedding", "frame_embedding", "deepcluster")
OPTIMIZERS = ("BertAdam", "AdamW")
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
    """AdamW's per-step lr, as the original's scheduler computes it: while step <= warmup_steps (a
    float, inclusive), linear from MIN_LR towards lr; then 0.5·lr·(1 + cos((step − warmup) /
    (total − warmup) · π)); both floored at MIN_LR."""
    if warmup_steps > 0 and step <= warmup_steps:
        value = min(1.0 * step / warmup_steps * (lr - MIN_LR) + MIN_LR, lr)
    else:
        value = 0.5 * lr * (1.0 + math.cos(1.0 * (step - warmup_steps) / (total_steps - warmup_steps) * math.pi))
    return max(value, MIN_LR)


def total_optimizer_steps(num_batches, accumulation, epochs):
    """Length of the schedules, the original's formula: (num_batches + accumulation − 1) / accumulation
    × epochs with true division, so it is a float when accumulation does not divide num_batches + accumulation − 1
    (11 batches, accumulation 3, 2 epochs -> 8.667). The original then takes floor(num_batches / accumulation)
    optimizer steps per epoch, never reaching the end of its schedule."""
    return (num_batches + accumulation - 1) / accumulation * epochs


class CosineSchedule:
    """Sets every group's lr to cosine_with_warmup(step) x the group's multiplier; the warm-up lasts
    warmup_proportion · total_steps steps, a float as in the original."""

    def __init__(self, optimizer, lr, total_steps, warmup_proportion):
        self.optimizer = optimizer
        self.lr = lr
        self.total_steps = total_steps
        self.warmup_steps = warmup_proportion * total_steps

    def set_step(self, step):
        base = cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = base * group["lr_multiplier"]
        return base


# The original's order of the four groups: (weight decay, CLIP at lr·coef_lr).
GROUP_ORDER = ((True, True), (False, True), (True, False), (False, False))


def parameter_groups(model, lr, coef_lr, weight_decay, new_added_modules=NEW_ADDED_MODULES):
    """The original's four groups in its order: CLIP with decay, CLIP without, new modules with
    decay, new modules without. CLIP groups train at lr·coef_lr, the others at lr.

    No decay for names containing `bias`, `LayerNorm.bias`, `LayerNorm.weight` (CLIP's `ln_*`
    weights are decayed, as in the original). CLIP = `clip.` in the name, except names containing
    one of `new_added_modules` (the cluster tables are CLIP: they train at lr·coef_lr). Every
    parameter is listed, frozen ones included, and empty groups are kept, as the original does: a
    frozen parameter has no gradient, so the optimizer skips it, and an original checkpoint's
    optimizer state lines up with these groups index by index (`map_optimizer_state`).
    """
    groups = {key: [] for key in GROUP_ORDER}
    for name, param in model.named_parameters():
        decay = not any(nd in name for nd in NO_DECAY)
        is_clip = "clip." in name and not any(m in name for m in new_added_modules)
        groups[(decay, is_clip)].append(param)
    return [{"params": groups[(decay, is_clip)], "weight_decay": weight_decay if decay else 0.0,
             "lr": lr * (coef_lr if is_clip else 1.0), "lr_multiplier": coef_lr if is_clip else 1.0}
            for decay, is_clip in GROUP_ORDER]


def logged_lr(optimizer):
    """The value the original logs as train/lr after an optimizer step. AdamW: group 0's lr, i.e.
    lr · coef_lr · schedule of the CLIP decay group at the step just taken. BertAdam (its get_lr()[0]):
    the scheduled lr of the first parameter, in group order, that has optimizer state, at its next
    step; 0 before the first step."""
    if not isinstance(optimizer, BertAdam):
        return optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        for param in group["params"]:
            if optimizer.state.get(param):
                return optimizer.scheduled_lr(group, optimizer.state[param]["step"])
    return 0.0


def build_optimizer(model, optim, lr, coef_lr, weight_decay, betas, eps, total_steps, warmup_proportion,
                    new_added_modules=NEW_ADDED_MODULES):
    """-> (optimizer, schedule or None). BertAdam schedules itself; AdamW gets a CosineSchedule.
    `total_steps` is the schedule length, `total_optimizer_steps(...)` to follow the original; BertAdam
    uses `betas` and `eps` (the original hard-codes 0.9, 0.98, 1e-6 for it, the flags' defaults)."""
    groups = parameter_groups(model, lr, coef_lr, weight_decay, new_added_modules)
    if optim == "BertAdam":
        optimizer = BertAdam(groups, lr=lr, warmup=warmup_proportion, t_total=total_steps, b1=betas[0],
                             b2=betas[1], e=eps, weight_decay=weight_decay, max_grad_norm=1.0)
        return optimizer, None
    if optim == "AdamW":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        return optimizer, CosineSchedule(optimizer, lr, total_steps, warmup_proportion)
    raise ValueError(f"--optim {optim} is unknown; choose BertAdam or AdamW")


ALWAYS_TRAIN = ("ln_final.", "text_projection", "logit_scale", "visual.ln_post.", "visual.proj")
BLOCK_PREFIXES = ("visual.transformer.resblocks.", "transformer.resblocks.")


def frozen_by_layer_num(name, freeze_layer_num):
    """Whether --freeze_layer_num freezes the CLIP parameter `name` (a name inside `clip.`): blocks
    below the number (a cluster table follows the block it sits in) and the embeddings; the output
    layers in ALWAYS_TRAIN and the 3-D patch weight `visual.conv2` never; -1 freezes nothing.

    FIX: with --linear_patch 3d the original meant to keep only conv2 trainable, but its test
    (`name.find("conv2.")`, true for every name) froze nothing at all."""
    if freeze_layer_num < 0 or name.startswith(ALWAYS_TRAIN) or name.startswith("visual.conv2."):
        return False
    if name.startswith(BLOCK_PREFIXES):
        return int(name.split(".resblocks.")[1].split(".")[0]) < freeze_layer_num
    return True


def freeze_clip_layers(clip, freeze_layer_num, freeze_all=False):
    """Apply --freeze_layer_num (see `frozen_by_layer_num`) to `clip`. `freeze_all` (--freeze_clip 1,
    an extension: the original's code for it is commented out) freezes every CLIP weight except the
    cluster tables."""
    for name, param in clip.named_parameters():
        if freeze_all:
            if "tokencluster_inter." not in name:
                param.requires_grad = False
        elif frozen_by_layer_num(name, freeze_layer_num):
            param.requires_grad = False


def optimizer_kind(param_groups, state):
    """'BertAdam' or 'AdamW' from a saved optimizer's groups and state (None when unknown)."""
    keys = set().union(*(s.keys() for s in state.values())) if state else set()
    group_keys = set(param_groups[0]) if param_groups else set()
    if "next_m" in keys or "t_total" in group_keys:
        return "BertAdam"
    if "exp_avg" in keys or "betas" in group_keys:
        return "AdamW"
    return None


def map_optimizer_state(saved, optimizer):
    """Fit a saved optimizer state dict (the original's or ours) onto `optimizer` built by
    `build_optimizer`. Returns (state dict for `optimizer.load_state_dict`, None) when the groups
    correspond (same optimizer, same number of groups, same number of parameters per group and every
    saved moment shaped like the parameter at its position), else (None, the reason).

    Hyperparameters follow torch's rule (the saved values win) for the keys this optimizer has; the
    original's AdamW `lr_mult` becomes `lr_multiplier`, its other keys (`decay_mult`, BertAdam's
    `schedule`) are dropped.
    """
    if not isinstance(saved, dict) or "param_groups" not in saved or "state" not in saved:
        return None, "the checkpoint holds no optimizer state"
    groups, state = saved["param_groups"], saved["state"]
    ours = "BertAdam" if isinstance(optimizer, BertAdam) else "AdamW"
    kind = optimizer_kind(groups, state)
    if kind != ours:
        return None, f"the saved optimizer is {kind or 'of an unknown kind'}, this run uses {ours} (--optim)"
    if len(groups) != len(optimizer.param_groups):
        return None, f"the saved optimizer has {len(groups)} parameter groups, this one {len(optimizer.param_groups)}"
    for i, (group, current) in enumerate(zip(groups, optimizer.param_groups)):
        reason = _group_mismatch(i, group, current, state)
        if reason:
            return None, reason
    mapped = [_merged_group(group, current) for group, current in zip(groups, optimizer.param_groups)]
    return {"state": state, "param_groups": mapped}, None


def _group_mismatch(i, group, current, state):
    """Why saved group i does not fit the current group (None when it does)."""
    if group.get("schedule", "warmup_cosine") != "warmup_cosine":
        return f"group {i} uses BertAdam schedule {group['schedule']!r}; only warmup_cosine is implemented"
    if len(group["params"]) != len(current["params"]):
        return (f"group {i} holds {len(group['params'])} parameters in the saved optimizer, "
                f"{len(current['params'])} here")
    for position, (index, param) in enumerate(zip(group["params"], current["params"])):
        for key, value in state.get(index, {}).items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                return (f"group {i}, parameter {position}: saved {key} has shape {tuple(value.shape)}, "
                        f"the parameter {tuple(param.shape)}")
    return None


def _merged_group(group, current):
    """The current group's hyperparameters overwritten by the saved ones it shares, with the saved
    parameter ids (torch maps them onto the current parameters by position)."""
    merged = {key: value for key, value in current.items() if key != "params"}
    merged.update({key: value for key, value in group.items() if key in current and key != "params"})
    if "lr_mult" in group:
        merged["lr_multiplier"] = group["lr_mult"]
    merged["params"] = list(group["params"])
    return merged


# X-CLIP (XCLIP_SPEC §4). The new parts train at 10·lr; each of the four groups is split into weight
# decay and no decay. Group order: CLIP, then these parts in this order (a name joins the first part
# it contains; the original's substring tests, under which no X-CLIP name matches two parts).
XCLIP_NEW_PARTS = ("mit", "prompts", "message_")
XCLIP_NEW_PARTS_LR_SCALE = 10
XCLIP_BETAS = (0.9, 0.98)
XCLIP_EPS = 1e-8
XCLIP_NO_DECAY_KEYWORDS = ("positional_embedding",)
# The original registers its top-level modules in this order ("" = parameters of the model itself),
# and in each vision block the message_* layers before CLIP's; named_parameters follows it.
XCLIP_TOP_LEVEL_ORDER = ("", "prompts_generator", "mit", "visual", "transformer", "token_embedding", "ln_final",
                         "prompts_visual_ln")


def xclip_original_position(name):
    """Sort key placing an X-CLIP parameter where the original's `named_parameters` lists it: the
    vision tower's own tensors, then its blocks in order (message_* first in each), then ln_post."""
    top = name.split(".")[0] if "." in name else ""
    section = 0
    if name.startswith("visual.transformer.resblocks."):
        section = 1 + int(name.split(".")[3])
    elif name.startswith("visual.ln_post."):
        section = 1 << 30
    return XCLIP_TOP_LEVEL_ORDER.index(top), section, 0 if ".message_" in name else 1


def xclip_named_parameters(model):
    """(name, parameter) of an X-CLIP in the original's order (a stable sort of ours), so that
    parameter indices in optimizer states agree with the original's checkpoints."""
    return sorted(model.named_parameters(), key=lambda item: xclip_original_position(item[0]))


def xclip_part(name):
    """'clip' or the first of XCLIP_NEW_PARTS the name contains."""
    return next((part for part in XCLIP_NEW_PARTS if part in name), "clip")


def xclip_no_decay(name, param):
    """1-D tensors, biases and positional tables take no weight decay (0-dim ones do)."""
    return param.dim() == 1 or name.endswith(".bias") or any(k in name for k in XCLIP_NO_DECAY_KEYWORDS)


def xclip_parameter_groups(model, lr, weight_decay):
    """The original's 8 AdamW groups, in its order: CLIP, mit, prompts, message_, each as (weight
    decay, no decay); CLIP at lr, the others at 10·lr. Parameters that do not require gradients are
    left out (empty groups are kept, so there are always 8); within a group, the original's order."""
    groups = []
    trainable = [(n, p) for n, p in xclip_named_parameters(model) if p.requires_grad]
    for part in ("clip",) + XCLIP_NEW_PARTS:
        members = [(n, p) for n, p in trainable if xclip_part(n) == part]
        part_lr = lr if part == "clip" else lr * XCLIP_NEW_PARTS_LR_SCALE
        for no_decay in (False, True):
            params = [p for n, p in members if xclip_no_decay(n, p) == no_decay]
            groups.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr": part_lr})
    return groups


class XCLIPCosineSchedule:
    """timm's CosineLRScheduler as the original X-CLIP builds and steps it, for the engine's
    `set_step(k)` contract (k = optimizer steps already taken, over the whole run).

    The original builds it with t_initial = int(epochs·I), warmup_t = int(warmup_epochs·I) (I = micro-
    batches per epoch), warm-up from 0, lr_min = lr/100 for every group, one cycle, and calls
    `step_update(epoch·I + idx)` after each optimizer step, idx being the micro-batch that completed
    the step. An epoch has I div A steps (A = accumulation): its leftover micro-batches never step.
    So step 0 runs at the lrs the scheduler set when it was built (0 with a warm-up, the base lrs
    without) and step k ≥ 1 at the lrs for the micro-batch index of step k − 1.
    """

    def __init__(self, optimizer, *, lr_min, epochs, warmup_epochs, micro_batches_per_epoch, accumulation):
        if micro_batches_per_epoch < accumulation:
            raise ValueError(f"an epoch has {micro_batches_per_epoch} batches, fewer than "
                             f"--gradient_accumulation_steps {accumulation}: no optimizer step would ever run; "
                             "lower the accumulation or --batch_size")
        self.optimizer = optimizer
        self.micro_batches_per_epoch = micro_batches_per_epoch
        self.accumulation = accumulation
        self.steps_per_epoch = micro_batches_per_epoch // accumulation
        self.t_initial = int(epochs * micro_batches_per_epoch)
        self.warmup_t = int(warmup_epochs * micro_batches_per_epoch)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # timm keeps each group's base lr here
        self.base_values = [group["initial_lr"] for group in optimizer.param_groups]
        self.lr_min = lr_min
        self.warmup_steps = [value / self.warmup_t for value in self.base_values] if self.warmup_t else None
        self.set_step(0)

    def lrs_at(self, t):
        """Every group's lr at scheduler time t (a micro-batch index), timm's formula and rounding."""
        if self.warmup_t and t < self.warmup_t:
            return [t * step for step in self.warmup_steps]
        if t >= self.t_initial:  # past the single cycle
            return [self.lr_min for _ in self.base_values]
        return [self.lr_min + 0.5 * (base - self.lr_min) * (1 + math.cos(math.pi * t / self.t_initial))
                for base in self.base_values]

    def micro_batch_index(self, step):
        """The `step_update` argument after optimizer step `step` (0-based, global)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return epoch * self.micro_batches_per_epoch + (within + 1) * self.accumulation - 1

    def lrs_for_step(self, step):
        """Every group's lr during optimizer step `step`."""
        if step == 0:
            return [0.0 for _ in self.base_values] if self.warmup_t else list(self.base_values)
        return self.lrs_at(self.micro_batch_index(step - 1))

    def set_step(self, step):
        """Set every group's lr for optimizer step `step`; returns group 0's."""
        values = self.lrs_for_step(step)
        for group, value in zip(self.optimizer.param_groups, values):
            group["lr"] = value
        return values[0]

    def state_dict(self):
        """The values a timm CosineLRScheduler (1.0.x) saves, as in the original's `lr_scheduler`
        entry (plain Python values)."""
        return {"param_group_field": "lr", "_initial_param_group_field": "initial_lr",
                "base_values": list(self.base_values), "metric": None, "t_in_epochs": False,
                "noise_range_t": None, "noise_pct": 0.67, "noise_type": "normal", "noise_std": 1.0, "noise_seed": 42,
                "t_initial": self.t_initial, "lr_min": self.lr_min, "cycle_mul": 1.0, "cycle_decay": 1.0,
                "cycle_limit": 1, "warmup_t": self.warmup_t, "warmup_lr_init": 0, "warmup_prefix": False,
                "k_decay": 1.0, "warmup_steps": list(self.warmup_steps or [1 for _ in self.base_values])}


def build_xclip_optimizer(model, *, lr, weight_decay, epochs, warmup_epochs, micro_batches_per_epoch, accumulation):
    """-> (AdamW over `xclip_parameter_groups`, XCLIPCosineSchedule). Freeze first (`freeze_text_tower`):
    parameters that do not require gradients are left out, as the original's optimizer does."""
    optimizer = torch.optim.AdamW(xclip_parameter_groups(model, lr, weight_decay), betas=XCLIP_BETAS, eps=XCLIP_EPS)
    schedule = XCLIPCosineSchedule(optimizer, lr_min=lr / 100, epochs=epochs, warmup_epochs=warmup_epochs,
                                   micro_batches_per_epoch=micro_batches_per_epoch, accumulation=accumulation)
    return optimizer, schedule
