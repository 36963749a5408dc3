"""Tiny X-CLIP checkpoints in the released format, written by the tests and by
tests/reference/make_xclip_reference.py (which loads the same weights into the original).

The weights of the parts X-CLIP adds to CLIP are drawn from their key names and shapes, listed
here from XCLIP_SPEC §1.7 independently of modules/xclip*.py, so the list is a second description
of the format. Released files are `{'model', 'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch',
'config'}` with `config` a yacs CfgNode; yacs is not a dependency, so `yacs_stand_in` pickles a
dict subclass under the global name `yacs.config.CfgNode`, exactly as yacs' own class pickles.
"""
import collections
import math
import sys
from contextlib import contextmanager
from types import ModuleType

import torch

from tests.tiny_clip import make_tiny_clip_state_dict

REFERENCE_SEED = 0  # seed of the tiny CLIP and of the X-CLIP parts in the reference outputs
REFERENCE_LABELS = ["abseiling", "playing guitar", "riding a bike", "juggling balls", "making tea", "surfing water"]
# (case name, frames T, videos B, seed of the frames, class names): the inputs of tests/reference/xclip
REFERENCE_CASES = [
    ("t8_b2_k6", 8, 2, 11, REFERENCE_LABELS),
    ("t8_b2_k1", 8, 2, 11, ["abseiling"]),
    ("t8_b3_k3", 8, 3, 12, ["juggling balls", "a person making a cup of tea in the kitchen", "surfing"]),
    ("t4_b3_k6", 4, 3, 13, REFERENCE_LABELS),
]


def xclip_part_shapes(width, layers, embed_dim, num_frames, mit_layers=1, prompts_layers=2):
    """Key -> shape of every tensor X-CLIP adds to a CLIP of vision width W, L vision blocks and
    embedding size D (XCLIP_SPEC §1.7): 8L + 12·mit_layers + 13·prompts_layers + 7 keys."""
    W, D = width, embed_dim
    shapes = {}
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        shapes.update({
            p + "message_fc.weight": (W, W), p + "message_fc.bias": (W,),
            p + "message_ln.weight": (W,), p + "message_ln.bias": (W,),
            p + "message_attn.in_proj_weight": (3 * W, W), p + "message_attn.in_proj_bias": (3 * W,),
            p + "message_attn.out_proj.weight": (W, W), p + "message_attn.out_proj.bias": (W,),
        })
    shapes["mit.positional_embedding"] = (1, num_frames, D)
    for j in range(mit_layers):
        p = f"mit.resblocks.{j}."
        shapes.update({
            p + "attn.in_proj_weight": (3 * D, D), p + "attn.in_proj_bias": (3 * D,),
            p + "attn.out_proj.weight": (D, D), p + "attn.out_proj.bias": (D,),
            p + "ln_1.weight": (D,), p + "ln_1.bias": (D,),
            p + "mlp.c_fc.weight": (4 * D, D), p + "mlp.c_fc.bias": (4 * D,),
            p + "mlp.c_proj.weight": (D, 4 * D), p + "mlp.c_proj.bias": (D,),
            p + "ln_2.weight": (D,), p + "ln_2.bias": (D,),
        })
    shapes.update({"prompts_generator.alpha": (D,), "prompts_generator.norm.weight": (D,),
                   "prompts_generator.norm.bias": (D,)})
    for k in range(prompts_layers):
        p = f"prompts_generator.decoder.{k}."
        shapes.update({
            p + "cross_attn.q_proj.weight": (D, D), p + "cross_attn.k_proj.weight": (D, D),
            p + "cross_attn.v_proj.weight": (D, D),
            p + "cross_attn.proj.weight": (D, D), p + "cross_attn.proj.bias": (D,),
            p + "norm1.weight": (D,), p + "norm1.bias": (D,), p + "norm3.weight": (D,), p + "norm3.bias": (D,),
            p + "mlp.0.weight": (4 * D, D), p + "mlp.0.bias": (4 * D,),
            p + "mlp.3.weight": (D, 4 * D), p + "mlp.3.bias": (D,),
        })
    shapes.update({"prompts_visual_ln.weight": (W,), "prompts_visual_ln.bias": (W,), "prompts_visual_proj": (W, D)})
    return shapes


def random_tensor_for(key, shape, generator):
    """Values of a plausible trained model, chosen from the key's name and shape only: LayerNorms
    near 1/0, prompt scales near 0.3 (large enough that the prompts visibly move the logits), the
    MIT's frame positions, biases small, matrices scaled by 1/sqrt(fan-in)."""
    randn = torch.randn(shape, generator=generator)
    name = key.rsplit(".", 1)[-1]
    is_norm = any(part in key for part in ("_ln.", "ln_1.", "ln_2.", "norm.", "norm1.", "norm3."))
    if name == "alpha":
        return 0.3 + 0.1 * randn
    if is_norm:
        return (1 + 0.1 * randn) if name == "weight" else 0.1 * randn
    if len(shape) == 1:
        return 0.02 * randn
    if key == "mit.positional_embedding":
        return 0.1 * randn
    fan_in = shape[0] if key == "prompts_visual_proj" else shape[-1]  # prompts_visual_proj is used as x @ P
    return randn / math.sqrt(fan_in)


def make_tiny_xclip_state_dict(seed=REFERENCE_SEED, num_frames=8, mit_layers=1, prompts_layers=2, **clip_sizes):
    """A tiny X-CLIP state dict (fp32): `make_tiny_clip_state_dict(seed, **clip_sizes)` plus the X-CLIP
    parts drawn from a generator seeded with seed + 1 in the order of `xclip_part_shapes`."""
    state = make_tiny_clip_state_dict(seed=seed, **clip_sizes)
    width, embed_dim = state["visual.conv1.weight"].shape[0], state["visual.proj"].shape[1]
    layers = clip_sizes.get("layers", 12)
    g = torch.Generator().manual_seed(seed + 1)
    for key, shape in xclip_part_shapes(width, layers, embed_dim, num_frames, mit_layers, prompts_layers).items():
        state[key] = random_tensor_for(key, shape, g)
    return state


def reference_video(seed, videos, frames, size=224):
    """The frames of a reference case: [B, T, 3, size, size], standard normal (normalised pixels)."""
    return torch.randn(videos, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


class CfgNode(dict):
    """Stand-in for yacs.config.CfgNode: a dict whose instance attributes are the four yacs keeps,
    so it pickles with the same opcodes as a frozen yacs config."""

    def __init__(self, init=()):
        super().__init__(init)
        self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {},
                              "__new_allowed__": False})


CfgNode.__module__ = "yacs.config"


@contextmanager
def yacs_stand_in():
    """Make `yacs.config.CfgNode` resolve to the stand-in while pickling, then restore sys.modules."""
    package, module = ModuleType("yacs"), ModuleType("yacs.config")
    package.config, module.CfgNode = module, CfgNode
    saved = {name: sys.modules.get(name) for name in ("yacs", "yacs.config")}
    sys.modules.update({"yacs": package, "yacs.config": module})
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def released_config(num_frames, num_classes, arch="ViT-B/32"):
    """The original's config (XCLIP_SPEC §6 defaults) as nested stand-in CfgNodes."""
    section = lambda **values: CfgNode(values)
    return CfgNode({
        "BASE": [""],
        "DATA": section(ROOT="", TRAIN_FILE="", VAL_FILE="", DATASET="kinetics400", INPUT_SIZE=224,
                        NUM_FRAMES=num_frames, NUM_CLASSES=num_classes, LABEL_LIST="labels/kinetics_400_labels.csv"),
        "MODEL": section(ARCH=arch, DROP_PATH_RATE=0.0, PRETRAINED=None, RESUME=None, FIX_TEXT=True),
        "TRAIN": section(EPOCHS=30, WARMUP_EPOCHS=5, WEIGHT_DECAY=0.001, LR=8e-6, BATCH_SIZE=8,
                         ACCUMULATION_STEPS=1, LR_SCHEDULER="cosine", OPTIMIZER="adamw", OPT_LEVEL="O1",
                         AUTO_RESUME=False, USE_CHECKPOINT=False),
        "AUG": section(LABEL_SMOOTH=0.1, COLOR_JITTER=0.8, GRAY_SCALE=0.2, MIXUP=0.8, CUTMIX=1.0,
                       MIXUP_SWITCH_PROB=0.5),
        "TEST": section(NUM_CLIP=1, NUM_CROP=1, ONLY_TEST=False),
        "OUTPUT": "exp", "SAVE_FREQ": 1, "PRINT_FREQ": 50, "SEED": 1024, "LOCAL_RANK": 0,
    })


def optimizer_state(state_dict, lr=8e-6, weight_decay=0.001):
    """An AdamW state dict shaped like the original's (XCLIP_SPEC §4): 8 groups (CLIP, mit, prompts,
    message_; each with and without weight decay) over the trainable keys, before any step."""
    def part(key):
        for name in ("prompts", "mit", "message_"):
            if name in key:
                return name
        return "clip"
    trainable = [k for k in state_dict if any(s in k for s in ("visual.", "mit", "prompts"))]
    groups = []
    for name in ("clip", "mit", "prompts", "message_"):
        keys = [k for k in trainable if part(k) == name]
        no_decay = [k for k in keys if state_dict[k].dim() == 1 or k.endswith(".bias") or "positional_embedding" in k]
        group_lr = lr if name == "clip" else 10 * lr
        decay = [k for k in keys if k not in no_decay]
        for selected, group_decay in ((decay, weight_decay), (no_decay, 0.0)):
            params = [torch.nn.Parameter(torch.zeros(())) for _ in selected]  # stand-ins: only indices are saved
            groups.append({"params": params, "lr": group_lr, "weight_decay": group_decay})
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8).state_dict()


def scheduler_state(lr=8e-6, groups=8, epochs=30, warmup_epochs=5, steps_per_epoch=10):
    """Plain values as in a timm CosineLRScheduler state dict."""
    base_values = [lr if i < 2 else 10 * lr for i in range(groups)]
    warmup_t = warmup_epochs * steps_per_epoch
    return {"t_initial": epochs * steps_per_epoch, "lr_min": lr / 100, "cycle_mul": 1.0, "cycle_decay": 1.0,
            "cycle_limit": 1, "warmup_t": warmup_t, "warmup_lr_init": 0, "warmup_prefix": False,
            "t_in_epochs": False, "noise_range_t": None, "noise_pct": 0.67, "noise_std": 1.0, "noise_seed": 42,
            "param_group_field": "lr", "base_values": base_values,
            "warmup_steps": [v / warmup_t for v in base_values]}


def released_checkpoint(state_dict, num_classes, epoch=29, max_accuracy=81.25):
    """The dict the original's `epoch_saving` writes, config included (call inside `yacs_stand_in`
    only to pickle it; building it needs nothing)."""
    num_frames = state_dict["mit.positional_embedding"].shape[1]
    return {"model": collections.OrderedDict(state_dict), "optimizer": optimizer_state(state_dict), "lr_scheduler": scheduler_state(),
            "max_accuracy": max_accuracy, "epoch": epoch, "config": released_config(num_frames, num_classes)}


def write_released_checkpoint(path, state_dict, num_classes=len(REFERENCE_LABELS), **fields):
    """torch.save a released-format file whose `config` is pickled as `yacs.config.CfgNode`."""
    checkpoint = released_checkpoint(state_dict, num_classes, **fields)
    with yacs_stand_in():
        torch.save(checkpoint, path)
    return checkpoint
