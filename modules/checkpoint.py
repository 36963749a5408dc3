"""Checkpoints: atomic saving, and strict loading of the original's files with helpful errors.

A checkpoint is the original's dict `{epoch, global_step, arch, state_dict, best_acc1, optimizer
[, scaler]}` plus `hparams` (the run's arguments), so a file describes itself.
"""
import logging
import os
import pickle

import torch

logger = logging.getLogger(__name__)

# Present in released checkpoints, not a parameter of this model (and never used by the original).
IGNORED_KEYS = ("clip.visual.position_ids",)
MAX_LISTED = 12

# (substring of a key, flag that decides whether the model has it)
KEY_FLAGS = (
    ("tokencluster_inter.cluster_embed", "--cluster_embedding 1 and the same --cluster_num_blocks / "
                                         "--target_frames_blocks / --cluster_algo schedule"),
    ("tokencluster_inter.cluster_frame_embed", "--cluster_frame_embedding 1"),
    ("tokencluster_inter.spg", "--spectral_spg 1 with --cluster_algo spectral"),
    ("frame_position_embeddings", "--sim_header seqTransf or seqLSTM"),
    ("transformerClip.", "--sim_header seqTransf with the same --cross_num_hidden_layers"),
    ("lstm_visual.", "--sim_header seqLSTM"),
    ("cross.", "--sim_header tightTransf with the same --cross_num_hidden_layers"),
    ("similarity_dense.", "--sim_header tightTransf"),
    ("clip.", "--pretrained_clip_name of the CLIP the checkpoint was trained from"),
)


class CheckpointMismatch(ValueError):
    pass


def save_checkpoint(state, path):
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path):
    """Load a checkpoint file on the CPU. Tensors-only files load with `weights_only`; files that
    pickle other objects (e.g. numpy scalars in the original's) need a full unpickle, logged."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        logger.warning("%s holds non-tensor objects; loading it with full unpickling (trust the file)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def model_state_from_checkpoint(checkpoint):
    """The model's state dict from a checkpoint dict (or a bare state dict), without the `module.`
    prefix of DDP and without keys the model never had."""
    state_dict = checkpoint.get("state_dict", checkpoint)
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}


def mismatch_message(missing, unexpected, mismatched):
    lines = ["the checkpoint does not match the model built from the flags:"]
    for title, keys in (("missing in the checkpoint", missing), ("unexpected in the checkpoint", unexpected),
                        ("shape differs", mismatched)):
        if keys:
            shown = ", ".join(keys[:MAX_LISTED]) + (f", ... ({len(keys)} in all)" if len(keys) > MAX_LISTED else "")
            lines.append(f"  {title}: {shown}")
    hints = []
    for key in missing + unexpected + mismatched:
        for pattern, flag in KEY_FLAGS:
            if pattern in key and flag not in hints:
                hints.append(flag)
                break
    if hints:
        lines.append("  check the flags the checkpoint was trained with: " + "; ".join(hints))
    return "\n".join(lines)


def load_model_weights(model, checkpoint):
    """Load strictly; on any difference raise CheckpointMismatch listing the keys and the flags
    that probably differ."""
    state_dict = model_state_from_checkpoint(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointMismatch(mismatch_message(missing, unexpected, mismatched))
    model.load_state_dict(state_dict, strict=True)
