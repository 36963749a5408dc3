"""X-CLIP's YAML configuration files, read as flag defaults (XCLIP_SPEC §6).

`--config configs/k400/32_8.yaml [--opts KEY VALUE ...]` merges, in the original's order, its
defaults, the files in the YAML's `BASE` list (relative to the YAML), the YAML itself and `--opts`;
an unknown key is an error naming it. The result becomes the parser's defaults, so flags given on
the command line win. Keys that have no flag yet are kept in `args.xclip_config` (with every other
key) and logged.
"""
import ast
import copy
import os

import yaml

from dataloaders.video_list import LABELS_DIR

# Every key of the original's configuration, with its default.
XCLIP_DEFAULTS = {
    "BASE": [""],
    "DATA": {"ROOT": "", "TRAIN_FILE": "", "VAL_FILE": "", "DATASET": "kinetics400", "INPUT_SIZE": 224,
             "NUM_FRAMES": 8, "NUM_CLASSES": 400, "LABEL_LIST": "labels/kinetics_400_labels.csv"},
    "MODEL": {"ARCH": "ViT-B/32", "DROP_PATH_RATE": 0.0, "PRETRAINED": None, "RESUME": None, "FIX_TEXT": True},
    "TRAIN": {"EPOCHS": 30, "WARMUP_EPOCHS": 5, "WEIGHT_DECAY": 0.001, "LR": 8e-6, "BATCH_SIZE": 8,
              "ACCUMULATION_STEPS": 1, "LR_SCHEDULER": "cosine", "OPTIMIZER": "adamw", "OPT_LEVEL": "O1",
              "AUTO_RESUME": False, "USE_CHECKPOINT": False},
    "AUG": {"LABEL_SMOOTH": 0.1, "COLOR_JITTER": 0.8, "GRAY_SCALE": 0.2, "MIXUP": 0.8, "CUTMIX": 1.0,
            "MIXUP_SWITCH_PROB": 0.5},
    "TEST": {"NUM_CLIP": 1, "NUM_CROP": 1, "ONLY_TEST": False},
    "OUTPUT": "", "SAVE_FREQ": 1, "PRINT_FREQ": 50, "SEED": 1024,
}
PRECISION_OF_OPT_LEVEL = {"O0": "fp32", "O1": "amp", "O2": "fp16"}
# Configuration key -> the flag (argparse dest) it sets.
FLAG_OF_KEY = {
    "DATA.ROOT": "features_path", "DATA.TRAIN_FILE": "train_list", "DATA.VAL_FILE": "val_list",
    "DATA.LABEL_LIST": "labels_csv", "DATA.NUM_FRAMES": "max_frames", "MODEL.ARCH": "pretrained_clip_name",
    "MODEL.RESUME": "resume", "MODEL.PRETRAINED": "pretrained_clip_path", "TRAIN.EPOCHS": "epochs",
    "TRAIN.WEIGHT_DECAY": "wd", "TRAIN.LR": "lr", "TRAIN.BATCH_SIZE": "batch_size",
    "TRAIN.ACCUMULATION_STEPS": "gradient_accumulation_steps", "TRAIN.OPT_LEVEL": "precision",
    "TEST.NUM_CLIP": "num_clips", "TEST.NUM_CROP": "num_crops", "PRINT_FREQ": "n_display", "SEED": "seed",
    "MODEL.FIX_TEXT": "fix_text", "MODEL.DROP_PATH_RATE": "drop_path_rate", "TRAIN.WARMUP_EPOCHS": "warmup_epochs",
    "TRAIN.USE_CHECKPOINT": "use_checkpoint", "AUG.LABEL_SMOOTH": "label_smooth", "AUG.MIXUP": "mixup",
    "AUG.CUTMIX": "cutmix", "AUG.MIXUP_SWITCH_PROB": "mixup_switch_prob", "AUG.COLOR_JITTER": "color_jitter",
    "AUG.GRAY_SCALE": "gray_scale", "SAVE_FREQ": "save_freq",
}
# Keys read elsewhere: the recognition task checks them against the labels CSV and the model.
# OUTPUT is not read: --output_dir is required (the original's --output, default `exp`, also
# always overrode it).
CHECKED_KEYS = ("DATA.NUM_CLASSES", "DATA.INPUT_SIZE", "DATA.DATASET", "TEST.ONLY_TEST", "OUTPUT")


class ConfigError(ValueError):
    pass


def merge(config, update, source, prefix=""):
    """Merge the nested dict `update` into `config` in place; unknown keys and values of another
    type than the default's are errors naming `source` and the key."""
    for key, value in update.items():
        name = prefix + key
        if key not in config:
            raise ConfigError(f"{source}: unknown key {name}")
        if isinstance(config[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name} must be a section of keys, got {value!r}")
            merge(config[key], value, source, name + ".")
        else:
            config[key] = checked_value(config[key], value, source, name)


def checked_value(default, value, source, name):
    """`value` if it has the type of `default` (None defaults take anything; ints widen to floats)."""
    if default is None or value is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{source}: {name} must be of type {type(default).__name__} (like {default!r}), got {value!r}")


def merge_file(config, path):
    """The files of the YAML's BASE list first (relative to it), then the YAML."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path} does not exist")
    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration keys")
    for base in loaded.get("BASE", [""]):
        if base:
            merge_file(config, os.path.join(os.path.dirname(path), base))
    merge(config, loaded, path)


def merge_opts(config, opts):
    """`--opts KEY VALUE ...` (dotted keys; values as Python literals, else strings), as yacs does."""
    if len(opts) % 2:
        raise ConfigError(f"--opts takes KEY VALUE pairs, got an odd number of items: {opts}")
    for key, text in zip(opts[::2], opts[1::2]):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *sections, last = key.split(".")
        update = {last: value}
        for section in reversed(sections):
            update = {section: update}
        merge(config, update, "--opts")


def load_config(path, opts):
    """X-CLIP's configuration: defaults, then `path` (may be None) with its BASE files, then `opts`."""
    config = copy.deepcopy(XCLIP_DEFAULTS)
    if path:
        merge_file(config, path)
    merge_opts(config, opts or [])
    return config


def flatten(config, prefix=""):
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def flag_defaults(config):
    """Parser defaults from a configuration: {dest: value}. Empty strings and None leave the
    parser's own default; TEST.ONLY_TEST selects eval-only."""
    flat = flatten(config)
    defaults = {}
    for key, dest in FLAG_OF_KEY.items():
        value = flat[key]
        if value in ("", None):
            continue
        if key == "TRAIN.OPT_LEVEL":
            if value not in PRECISION_OF_OPT_LEVEL:
                raise ConfigError(f"TRAIN.OPT_LEVEL must be one of {', '.join(PRECISION_OF_OPT_LEVEL)}, got {value!r}")
            value = PRECISION_OF_OPT_LEVEL[value]
        defaults[dest] = shipped_label_list(value) if key == "DATA.LABEL_LIST" else value
    if flat["TEST.ONLY_TEST"]:
        defaults.update(do_train=0, do_eval=1)
    defaults["xclip_config"] = flat
    return defaults


def shipped_label_list(path):
    """The original's `labels/<name>.csv` (relative to its repository) is shipped here as
    dataloaders/labels/<name>.csv: that file, unless `path` exists as written."""
    shipped = os.path.join(LABELS_DIR, os.path.basename(path))
    if os.path.dirname(path) == "labels" and not os.path.exists(path) and os.path.isfile(shipped):
        return shipped
    return path


def unused_keys(flat):
    """Keys of a flattened configuration set to something other than their default that no flag
    or check reads yet."""
    default = flatten(XCLIP_DEFAULTS)
    return sorted(k for k, v in flat.items()
                  if k not in FLAG_OF_KEY and k not in CHECKED_KEYS and k != "BASE" and v != default[k])
