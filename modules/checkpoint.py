"""Checkpoints: atomic, verified saving, and safe, strict loading of the original's files.

A checkpoint is the original's dict `{epoch, global_step, arch, state_dict, best_acc1, optimizer
[, scaler]}` plus `hparams` (the run's arguments), so a file describes itself. Every saved file
gets a SHA-256 sidecar `<file>.sha256` (`sha256sum` format) checked when it is read
(modules/integrity.py says how a crash is survived).

Loading never runs code from the file: it unpickles with `torch.load(weights_only=True)`, which
builds only tensors and plain containers, plus an allow-list of the foreign objects that real
checkpoints hold (`SAFE_GLOBALS`). Full unpickling needs the caller's explicit `unsafe=True`.
"""
import collections
import dataclasses
import logging
import os
import pickle
import shutil

import numpy as np
import torch

from modules.integrity import verify_file, write_verified

logger = logging.getLogger(__name__)

UNSAFE_FLAG = "--unsafe_load_checkpoint 1"
# numpy scalars are rebuilt from (dtype, raw bytes); only numbers and booleans are expected.
NUMPY_KINDS = "biufc"
NUMPY_TYPE_CODES = "?bBhHiIlLqQefdgFDG"

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


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded: truncated, corrupt or not a checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects whose unpickling could run code."""


_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy._core.multiarray.scalar (numpy.core in 1.x)


def _numpy_dtype(spec, align=False, copy=True):
    """`numpy.dtype` as pickles call it, for number and boolean type strings only. Always a new
    object (`copy=True`), so the BUILD that follows never touches numpy's shared dtypes."""
    dtype = np.dtype(spec, align=False, copy=True) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in NUMPY_KINDS:
        raise pickle.UnpicklingError(f"refusing the numpy dtype {spec!r}: only numbers are expected")
    return dtype


def _numpy_scalar(dtype, data):
    """numpy's scalar reconstructor, for a number dtype and exactly its raw bytes."""
    if not (isinstance(dtype, np.dtype) and dtype.kind in NUMPY_KINDS and isinstance(data, bytes)
            and len(data) == dtype.itemsize):
        raise pickle.UnpicklingError("refusing a numpy scalar that is not a plain number")
    return _NUMPY_SCALAR(dtype, data)


# Foreign objects of real checkpoints, (what to build, the name the pickle uses):
# - numpy scalars (the original's `best_acc1` can be np.float64): numpy 2.x pickles
#   `numpy._core.multiarray.scalar`, numpy 1.x `numpy.core.multiarray.scalar`, both with a
#   `numpy.dtype`; the dtype classes are listed so that the pickle's BUILD may set the byte
#   order of the new dtype (numpy ignores a BUILD on its shared dtypes).
# - X-CLIP's yacs `CfgNode` (a dict subclass): loaded as an OrderedDict, without yacs.
SAFE_GLOBALS = [
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_dtype, "numpy.dtype"),
    *[(type(np.dtype(code)), f"{type(np.dtype(code)).__module__}.{type(np.dtype(code)).__name__}")
      for code in NUMPY_TYPE_CODES],
    (collections.OrderedDict, "yacs.config.CfgNode"),
]


def _refused_globals(path):
    """The names the safe load refuses in a zip-format checkpoint (None for other formats)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError, EOFError):
        return None


def _unreadable(path, error):
    size = os.path.getsize(path)
    reason = f"{type(error).__name__}: {str(error).split('. ')[0]}" if str(error) else type(error).__name__
    return CheckpointError(f"{path} ({size} bytes) is not a readable checkpoint (truncated, empty or not "
                           f"written by torch.save): {reason}")


def _torch_load(path, weights_only):
    """torch.load on the CPU with the allow-list; a file torch cannot parse is a CheckpointError
    (an UnpicklingError of the safe load is left to the caller)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError) as error:
        raise _unreadable(path, error) from None
    except pickle.UnpicklingError as error:
        if weights_only:
            raise
        raise _unreadable(path, error) from None


def _load(path, unsafe):
    """Safe load; full unpickling only when the safe one refuses the file and `unsafe` is set."""
    try:
        return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError:
        if not unsafe:
            refused = _refused_globals(path)
            what = (f"holds objects a safe load refuses ({', '.join(refused)}); unpickling them could run code"
                    if refused else "cannot be loaded safely (it is corrupt, or holds objects a safe load refuses)")
            raise UnsafeCheckpointError(f"{path} {what}. If you trust the file, load it with {UNSAFE_FLAG} "
                                        f"(read_checkpoint(..., unsafe=True))") from None
    logger.warning("loading %s with full unpickling (%s): it runs any code the file carries", path, UNSAFE_FLAG)
    return _torch_load(path, weights_only=False)


def read_checkpoint(path, unsafe=False):
    """Load a checkpoint file on the CPU, verified against its `.sha256` sidecar when it has one.

    Args:
        path: the file.
        unsafe: allow full unpickling when the safe load refuses the file (it can run code the
            file carries); logged as a warning naming the file.
    Raises:
        FileNotFoundError; IntegrityError (the content differs from its sidecar);
        UnsafeCheckpointError (refused objects, `unsafe` not given); CheckpointError (truncated,
        empty, not a checkpoint). All but the first are ValueErrors naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    verify_file(path)
    return _load(path, unsafe)


def read_checkpoint_field(path, field):
    """One small dict entry of a checkpoint of this project (`hparams`, `clip_config`), or None for
    other files, or when the file cannot be read: the full load at model building reports that.
    Memory-maps the file, so only the small pickle is read, and skips the SHA-256 check, which that
    full load does."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    value = checkpoint.get(field) if isinstance(checkpoint, dict) else None
    return value if isinstance(value, dict) else None


def read_hparams(path):
    """The `hparams` a checkpoint of this project carries (see `read_checkpoint_field`)."""
    return read_checkpoint_field(path, "hparams")


def save_checkpoint(state, path):
    """torch.save to a temporary file beside `path`, fsync, rename, then the `.sha256` sidecar:
    a crash never leaves half a file, and stale temporaries of crashed saves are removed."""
    return write_verified(path, lambda tmp: torch.save(state, tmp))


def clip_config_dict(model):
    """The CLIPConfig of a model (retrieval: `model.clip.config`; X-CLIP: `model.config`) as a dict of
    plain values, saved as a checkpoint's `clip_config` so converted weights rebuild exactly
    (activation, heads, image statistics) without their source."""
    return dataclasses.asdict(getattr(model, "clip", model).config)


def export_weights(model, path, half=False, **fields):
    """A weights-only file `{"state_dict", **fields}` (no optimizer state: a ViT-B/32 checkpoint with
    AdamW's moments is ~1.8 GB, its weights ~0.6 GB, half that in fp16), written as `save_checkpoint`.
    It loads with --resume (for evaluation) and --init_model."""
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in model.state_dict().items()}
    return save_checkpoint({"state_dict": state, "clip_config": clip_config_dict(model), **fields}, path)


def copy_checkpoint(source, destination):
    """Copy a verified checkpoint (e.g. to ckpt.best.pth.tar) with a sidecar of its own,
    atomically like `save_checkpoint`."""
    verify_file(source)
    return write_verified(destination, lambda tmp: shutil.copyfile(source, tmp))


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


def load_model_weights(model, checkpoint, strict=True):
    """Load the checkpoint's weights. Strict: on any difference raise CheckpointMismatch listing the
    keys and the flags that probably differ. Not strict (--init_model, as the original's
    init_preweight): load the keys whose names and shapes match, log the others."""
    state_dict = model_state_from_checkpoint(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatch(mismatch_message(missing, unexpected, mismatched))
    if missing or unexpected or mismatched:
        logger.warning("loading the weights that match; %s", mismatch_message(missing, unexpected, mismatched))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected and k not in mismatched},
                          strict=False)
