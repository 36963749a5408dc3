"""Train and evaluate CLIP video models: text-video retrieval (CenterCLIP, the default) and video
recognition (X-CLIP, `--task_type recognition`).

    python main.py --output_dir OUT [flags]                       # one process (CPU or one GPU)
    torchrun --nproc_per_node N main.py --output_dir OUT [flags]  # DDP, multi-node by torchrun's flags

`python params.py --help` lists the flags. Every evaluation writes its metrics to OUT/metrics.json
(and the task's matrix: OUT/sim_matrix.npy or OUT/scores.npy); training also writes log.txt,
hparams_train.json, results.jsonl, TensorBoard scalars under OUT/tensorboard, and
ckpt.pth.tar / ckpt.best.pth.tar.
"""
import faulthandler
import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from tqdm.contrib.logging import logging_redirect_tqdm

import params
from modules import distributed as du
from modules import engine
from modules.checkpoint import export_weights
from modules.run_folder import latest_checkpoint, prepare_training_folder
from modules.tasks import build_task

logger = logging.getLogger("centerclip")
# Failures with a cause the message names (a flag, a file, a diverged run): no traceback needed.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, engine.NonFiniteLoss, engine.NonFiniteWeights,
                   engine.NonFiniteEvaluation, engine.TooManyBrokenVideos)


def init_distributed(args):
    """Join torchrun's env:// group when launched by it (nccl on CUDA, gloo on CPU); pick the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = args.dist_backend if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(minutes=args.dist_timeout))
    if torch.cuda.is_available():
        torch.cuda.set_device(args.local_rank)
        device = torch.device("cuda", args.local_rank)
    else:
        device = torch.device("cpu")
    args.world_size, args.rank = du.get_world_size(), du.get_rank()
    args.n_gpu = args.world_size if device.type == "cuda" else 0
    return device


def prepare_run(args):
    """Resolve --resume latest (no checkpoint yet: start from scratch) and, on rank 0 of a training
    run, refuse an --output_dir that holds another run unless --resume or --overwrite 1.
    Returns the notes to log once logging is set up."""
    notes, continuing = list(args.startup_notes), args.resume is not None
    if args.resume == "latest":
        args.resume = latest_checkpoint(args.output_dir)
        if args.resume is None:
            notes.append(f"--resume latest: {args.output_dir} holds no checkpoint yet; starting from scratch")
    if args.do_train and not args.do_eval and du.is_main_process():
        removed = prepare_training_folder(args.output_dir, continuing, bool(args.overwrite))
        if removed:
            notes.append(f"--overwrite 1: removed the earlier run's {', '.join(removed)}")
    return notes


def setup_output(args):
    """Output folder, log.txt and console logging (rank 0 logs at --debug/INFO, others warn), and
    the arguments in hparams_train.json (hparams_eval.json for an evaluation)."""
    os.makedirs(args.output_dir, exist_ok=True)
    handlers = [logging.StreamHandler()]
    if du.is_main_process():
        handlers.append(logging.FileHandler(os.path.join(args.output_dir, "log.txt")))
        training = args.do_train and not args.do_eval and not args.inference_speed_test
        params.save_hparams(args, args.output_dir, "hparams_train.json" if training else "hparams_eval.json")
    logging.basicConfig(level=args.log_level if du.is_main_process() else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def main(argv=None):
    faulthandler.enable()  # a native crash (e.g. in a decoder) prints a traceback, not a bare exit code
    args = params.get_args(argv)
    device = init_distributed(args)
    notes = prepare_run(args)
    setup_output(args)
    with logging_redirect_tqdm():  # log lines go above the progress bars, not through them
        for note in notes:
            logger.info(note)
        if args.precision == "amp" and device.type == "cpu":
            logger.warning("--precision amp on the CPU is bfloat16 autocast, many times slower than fp32 on CPUs "
                           "without bfloat16 units; --precision fp32 gives fp32 numbers at full speed")
        run(args, device)
    if du.is_distributed():
        dist.destroy_process_group()


def run(args, device):
    """Build the task and its model, then time, evaluate or train."""
    engine.seed_everything(args.seed + args.rank)
    main_work = du.MainProcessWork(timedelta(minutes=args.dist_timeout))
    task = build_task(args)
    model, checkpoint = task.build_model(args, device)
    if args.export_weights:
        if du.is_main_process():
            export_weights(model, args.export_weights, half=bool(args.export_fp16), arch=task.arch, hparams=vars(args))
            logger.info("weights written to %s", args.export_weights)
    elif args.inference_speed_test:
        main_work.run(lambda: task.inference_speed_test(model, engine.evaluation_loader(task, args), device, args))
    elif args.do_eval:  # with --do_train 1 too: evaluate once and stop, as the original
        main_work.run(lambda: task.evaluate(model, engine.evaluation_loader(task, args), device, args))
    else:
        engine.train(task, model, device, args, checkpoint, main_work)


if __name__ == "__main__":
    try:
        main()
    except EXPECTED_ERRORS as error:  # one clear line in the console and log.txt, no traceback
        logger.error("%s: %s", type(error).__name__, error)
        sys.exit(1)
    except Exception:
        logger.exception("unexpected error")
        raise
