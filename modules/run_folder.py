"""The output folder of a run: refuse to train over another run, --overwrite, --resume latest."""
import glob
import os
import shutil

# What a training run leaves in its --output_dir (log.txt is appended to, never replaced).
RUN_FILES = ("ckpt.pth.tar", "ckpt.best.pth.tar", "results.jsonl", "tensorboard", "metrics.json", "sim_matrix.npy",
             "scores.npy")


def previous_run_files(output_dir):
    """The files of an earlier run in `output_dir`, with their SHA-256 sidecars and the
    per-epoch copies of --save_freq."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]
    extra = glob.glob(os.path.join(output_dir, "*.sha256"))
    extra += glob.glob(os.path.join(output_dir, "ckpt_epoch_*.pth.tar"))
    return found + sorted(os.path.basename(path) for path in extra)


def prepare_training_folder(output_dir, resume, overwrite):
    """Before a training run: an `output_dir` holding another run is refused unless the run resumes
    it (`--resume`) or `overwrite` (its files are removed first). Returns the removed names."""
    found = previous_run_files(output_dir) if os.path.isdir(output_dir) else []
    if not found or resume:
        return []
    if not overwrite:
        raise ValueError(f"--output_dir {output_dir} holds another run ({', '.join(found[:4])}); pass --resume latest "
                         "to continue it, --overwrite 1 to replace it, or another --output_dir")
    for name in found:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return found


def latest_checkpoint(output_dir):
    """`--resume latest`: <output_dir>/ckpt.pth.tar, or None when the folder holds none yet."""
    path = os.path.join(output_dir, "ckpt.pth.tar")
    return path if os.path.exists(path) else None
