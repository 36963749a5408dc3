"""Where a run's settings come from besides its command line, in order of precedence: flags given
on the command line, then a --config file (X-CLIP's YAML, or a saved hparams_train.json), then the
checkpoint the run loads (its model-defining flags), then the parser's defaults."""
import argparse
import json
import os

from modules.checkpoint import read_hparams
from modules.run_folder import latest_checkpoint
from modules.tasks.xclip_config import flag_defaults, load_config

# Flags that decide the model's shape or its forward pass: taken from the checkpoint's `hparams` on
# --resume / --init_model unless given on the command line or in --config.
MODEL_FLAGS = (
    "pretrained_clip_name", "max_words", "max_frames", "sim_header", "cross_num_hidden_layers", "linear_patch",
    "loose_type", "cluster_inter", "cluster_algo", "cluster_num_blocks", "target_frames_blocks", "cluster_embedding",
    "cluser_embed_from_clip", "cluster_frame_embedding", "aggregation", "cluster_iter_limit", "cluster_distance",
    "cluster_threshold", "minkowski_norm_p", "pre_norm", "spectral_sigma", "spectral_graph", "spectral_knn_k",
    "spectral_spg", "svd_correct_sign", "deep_cluster",
)
# hparams_train.json entries that describe the run that wrote it, not settings to reuse.
RUN_IDENTITY = ("output_dir", "resume", "init_model", "config", "opts", "local_rank", "world_size", "rank", "n_gpu",
                "export_weights", "overwrite", "only_test")


def pre_parse(argv):
    """The few flags that decide where other settings come from."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag, default in (("--task_type", "retrieval"), ("--config", None), ("--output_dir", None),
                          ("--resume", None), ("--init_model", None)):
        pre.add_argument(flag, default=default)
    pre.add_argument("-cfg", dest="config")
    pre.add_argument("--opts", nargs="+", default=None)
    return pre.parse_known_args(argv)[0]


def config_defaults(argv, dests):
    """(parser defaults, the dests a --config file sets): X-CLIP's defaults and YAML config for a
    recognition run, or the entries of a saved hparams_train.json (--config FILE.json) that are
    flags of this parser (`dests`)."""
    known = pre_parse(argv)
    if known.config and known.config.endswith(".json"):
        return hparams_file_defaults(known.config, dests)
    if known.task_type != "recognition" and known.config is None:
        return {}, set()
    config = load_config(known.config, known.opts)
    # X-CLIP validates with batch 2 and never clips gradients.
    defaults = {"task_type": "recognition", "datatype": "video_list", "batch_size_val": 2, "clip_grad_norm": 0.0,
                **flag_defaults(config)}
    return defaults, set(flag_defaults(config)) if known.config else set()


def hparams_file_defaults(path, dests):
    if not os.path.isfile(path):
        raise ValueError(f"--config {path} does not exist")
    with open(path) as f:
        saved = json.load(f)
    defaults = {k: v for k, v in saved.items() if k in dests and k not in RUN_IDENTITY}
    if saved.get("task_type", "retrieval") == "retrieval" and "batch_size" in defaults:
        # hparams record the micro-batch (--batch_size divided by the accumulation steps).
        defaults["batch_size"] *= saved.get("gradient_accumulation_steps", 1)
    return defaults, set(defaults)


def explicit_dests(parser, argv):
    """The dests of the flags actually written in `argv`."""
    explicit = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            explicit._add_action(_copy_without_default(action))
    return set(vars(explicit.parse_known_args(argv)[0]))


def _copy_without_default(action):
    copy = argparse.Action.__new__(type(action))
    copy.__dict__.update(action.__dict__)
    copy.default, copy.required = argparse.SUPPRESS, False
    return copy


def checkpoint_source(args):
    """The checkpoint whose hparams describe the model: --resume (`latest` resolved), else --init_model."""
    if args.resume == "latest":
        return latest_checkpoint(args.output_dir)
    return args.resume or args.init_model


def adopt_checkpoint_flags(args, explicit):
    """Set the model-defining flags not in `explicit` to the values the checkpoint was trained
    with. Returns one note per flag that differs (taken from the checkpoint, or given and different)."""
    source = checkpoint_source(args)
    hparams = read_hparams(source) if source and os.path.isfile(source) else None
    notes = []
    for flag in MODEL_FLAGS:
        if hparams is None or flag not in hparams or hparams[flag] == getattr(args, flag):
            continue
        if flag in explicit:
            notes.append(f"--{flag} {getattr(args, flag)} as given, but {source} was trained with {hparams[flag]}")
        else:
            notes.append(f"--{flag} {hparams[flag]} taken from {source} (instead of {getattr(args, flag)})")
            setattr(args, flag, hparams[flag])
    return notes
