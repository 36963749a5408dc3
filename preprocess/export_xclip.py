"""Export an X-CLIP training checkpoint of this project to the original's released format.

    python preprocess/export_xclip.py --checkpoint OUT/ckpt.best.pth.tar --out xclip.pth
    python preprocess/export_xclip.py --checkpoint OUT/ckpt.pth.tar --out xclip.pth --micro_batches_per_epoch 1875

Reads a checkpoint written by `main.py --task_type recognition` (`{'state_dict', 'epoch', 'best_acc1',
'optimizer', 'hparams', ...}`, loaded safely), builds the model from it (so a checkpoint that is not
a complete X-CLIP fails here, naming the keys), and writes `{'model', 'optimizer', 'lr_scheduler',
'max_accuracy', 'epoch', 'config'}` atomically (temporary file, rename, `.sha256` sidecar):

- model: the weights in fp32 under the original's names and order, no `module.` prefix;
- optimizer: the AdamW state as saved (8 groups in the original's order and parameter order);
- lr_scheduler: timm CosineLRScheduler's state; it needs I, the training loader's batches per epoch,
  which a checkpoint does not record: pass --micro_batches_per_epoch, else None is written (the
  original's --resume then restarts at epoch 0, with these weights and optimizer moments);
- max_accuracy: best_acc1 (top-1, percent); epoch: the last finished epoch, 0-based (the checkpoint
  stores the next one to run);
- config: the original's configuration keys rebuilt from the run's arguments, as a plain nested dict
  (not a yacs CfgNode; DATA.NUM_CLASSES counted from --labels_csv when that file is at hand).

The result loads with `build_xclip_from_checkpoint(read_checkpoint(path))`, with this project's
--resume / --init_model, and with the original's loaders.
"""
import argparse
import logging
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from dataloaders.video_list import read_class_names  # noqa: E402
from modules.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from modules.optim import XCLIPCosineSchedule  # noqa: E402
from modules.xclip import build_xclip_from_checkpoint  # noqa: E402
from modules.xclip_export import released_xclip_checkpoint, released_xclip_config  # noqa: E402

logger = logging.getLogger("export_xclip")


def class_count(hparams):
    """K from the run's labels CSV when it can be read here, else None (the config keeps its value)."""
    path = hparams.get("labels_csv")
    if path and os.path.isfile(path):
        return len(read_class_names(path))
    logger.warning("labels CSV %r is not at hand: DATA.NUM_CLASSES is left as the run's configuration has it", path)
    return None


def schedule_state(optimizer_state, hparams, micro_batches_per_epoch):
    """The timm scheduler state of the run, its base lrs taken from the saved optimizer's groups."""
    missing = [k for k in ("lr", "epochs", "warmup_epochs", "gradient_accumulation_steps") if k not in hparams]
    if missing:
        raise ValueError(f"the checkpoint's hparams lack {', '.join(missing)}: the lr scheduler's state cannot be "
                         "rebuilt; export without --micro_batches_per_epoch")
    groups = SimpleNamespace(param_groups=[dict(group) for group in optimizer_state["param_groups"]])
    schedule = XCLIPCosineSchedule(groups, lr_min=hparams["lr"] / 100, epochs=hparams["epochs"],
                                   warmup_epochs=hparams["warmup_epochs"],
                                   micro_batches_per_epoch=micro_batches_per_epoch,
                                   accumulation=hparams["gradient_accumulation_steps"])
    return schedule.state_dict()


def export(checkpoint_path, out, *, micro_batches_per_epoch=None, unsafe=False):
    """Write the released file `out` from the training checkpoint `checkpoint_path`; returns the dict."""
    checkpoint = read_checkpoint(checkpoint_path, unsafe=unsafe)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is not a training checkpoint of this project (no 'state_dict'); "
                         "a released X-CLIP file needs no export")
    model = build_xclip_from_checkpoint(checkpoint)
    hparams = checkpoint.get("hparams") or {}
    optimizer = checkpoint.get("optimizer")
    schedule = None
    if micro_batches_per_epoch is not None and optimizer is not None:
        schedule = schedule_state(optimizer, hparams, micro_batches_per_epoch)
    released = released_xclip_checkpoint(
        model, optimizer=optimizer, schedule=schedule, epoch=checkpoint.get("epoch", 0) - 1,
        max_accuracy=checkpoint.get("best_acc1", 0.0),
        config=released_xclip_config(hparams, num_classes=class_count(hparams)))
    save_checkpoint(released, out)
    logger.info("%s -> %s: %d tensors, epoch %d, max accuracy %.2f, optimizer %s, lr_scheduler %s", checkpoint_path,
                out, len(released["model"]), released["epoch"], released["max_accuracy"],
                "yes" if optimizer is not None else "none", "yes" if schedule is not None else "none")
    return released


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a recognition training checkpoint (ckpt.pth.tar)")
    parser.add_argument("--out", required=True, help="the released-format file to write")
    parser.add_argument("--micro_batches_per_epoch", type=int, default=None,
                        help="batches per epoch of the training loader, to write the lr scheduler's state")
    parser.add_argument("--unsafe_load_checkpoint", type=int, default=0,
                        help="allow full unpickling of a checkpoint the safe load refuses (runs its code)")
    return parser, parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser, args = parse_args(argv)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        export(args.checkpoint, args.out, micro_batches_per_epoch=args.micro_batches_per_epoch,
               unsafe=bool(args.unsafe_load_checkpoint))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
