"""An X-CLIP model in the original's released checkpoint format (XCLIP_SPEC §2):
`{'model', 'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch', 'config'}`.

The original pickles its yacs CfgNode as `config`; here `config` is a plain nested dict with the
same sections and keys (no yacs object: loading the file needs neither yacs nor code execution).
"""
from collections import OrderedDict
from collections.abc import Mapping

from torch.nn.parallel import DistributedDataParallel

from modules.optim import XCLIP_NEW_PARTS, xclip_original_position
from modules.tasks.xclip_config import FLAG_OF_KEY, PRECISION_OF_OPT_LEVEL, XCLIP_DEFAULTS, flatten

OPT_LEVEL_OF_PRECISION = {precision: level for level, precision in PRECISION_OF_OPT_LEVEL.items()}
OPTIMIZER_GROUPS = 2 * (1 + len(XCLIP_NEW_PARTS))  # CLIP and each new part, with and without decay


def released_state_dict(model):
    """The model's fp32 CPU tensors under the original's key names (no `module.`), in its order."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    state = model.state_dict()
    return OrderedDict((key, state[key].detach().cpu().float()) for key in sorted(state, key=xclip_original_position))


def state_of(thing, what):
    """A state dict from an object with `state_dict()`, a state dict itself, or None."""
    if thing is None or isinstance(thing, Mapping):
        return thing
    if hasattr(thing, "state_dict"):
        return thing.state_dict()
    raise TypeError(f"{what} must be an object with state_dict(), a state dict or None, got {type(thing).__name__}")


def released_xclip_checkpoint(model, *, optimizer=None, schedule=None, epoch, max_accuracy, config):
    """The dict the original's `epoch_saving` writes.

    Args:
        model: an XCLIP (or its DDP wrapper).
        optimizer: the AdamW of `build_xclip_optimizer` (8 groups, the original's order) or its state
            dict; None writes None (the original's resume then restarts at epoch 0 with the weights).
        schedule: the XCLIPCosineSchedule or its state dict (timm's layout), or None.
        epoch: the last finished epoch, 0-based (this project's training checkpoints store the next one).
        max_accuracy: best top-1, percent.
        config: plain nested dict (`released_xclip_config`); not a yacs CfgNode.
    """
    optimizer_state = state_of(optimizer, "optimizer")
    if optimizer_state is not None and len(optimizer_state["param_groups"]) != OPTIMIZER_GROUPS:
        raise ValueError(f"the optimizer has {len(optimizer_state['param_groups'])} parameter groups; X-CLIP's "
                         f"has {OPTIMIZER_GROUPS} (build it with build_xclip_optimizer)")
    return {"model": released_state_dict(model), "optimizer": optimizer_state,
            "lr_scheduler": state_of(schedule, "schedule"), "max_accuracy": float(max_accuracy),
            "epoch": int(epoch), "config": config}


def flag_value(key, value, default):
    """A flag's value as the config key holds it (precision -> OPT_LEVEL, 0/1 -> booleans)."""
    if key == "TRAIN.OPT_LEVEL":
        return OPT_LEVEL_OF_PRECISION[value]
    if isinstance(default, bool):
        return bool(value)
    return value


def nested(flat):
    """{'DATA.ROOT': v, 'SEED': s} -> {'DATA': {'ROOT': v}, 'SEED': s}."""
    config = {}
    for key, value in flat.items():
        *sections, last = key.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    return config


def released_xclip_config(hparams, *, num_classes=None):
    """The original's config of a run from its arguments (a training checkpoint's `hparams`), as a
    plain nested dict: the defaults, the --config file's keys, then every flag that maps to a key
    (XCLIP_SPEC §6), DATA.NUM_CLASSES when given, OUTPUT = --output_dir, and LOCAL_RANK, which the
    original adds."""
    defaults = flatten(XCLIP_DEFAULTS)
    flat = {**defaults, **(hparams.get("xclip_config") or {})}
    for key, dest in FLAG_OF_KEY.items():
        if hparams.get(dest) is not None:
            flat[key] = flag_value(key, hparams[dest], defaults[key])
    if num_classes is not None:
        flat["DATA.NUM_CLASSES"] = int(num_classes)
    flat["OUTPUT"] = hparams.get("output_dir") or flat["OUTPUT"]
    flat["LOCAL_RANK"] = int(hparams.get("local_rank") or 0)
    return nested(flat)
