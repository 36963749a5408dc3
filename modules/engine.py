"""The training engine shared by every task: epochs, optimizer steps, checkpoints, logging.

A task (`modules/tasks/`) says what a step's loss is and how to evaluate; this file does the rest
once for all of them: micro-batch accumulation, the scaler, gradient clipping, the schedule,
TensorBoard, `results.jsonl` (written by the task's evaluation), `ckpt.pth.tar` / `ckpt.best.pth.tar`
and `--resume`.
"""
import json
import logging
import math
import os
import random
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from modules import distributed as du
from dataloaders.sources import check_video_source
from modules.checkpoint import clip_config_dict, copy_checkpoint, save_checkpoint
from modules.optim import logged_lr
from modules.precision import autocast_context, grad_scaler

logger = logging.getLogger("centerclip")


class NonFiniteLoss(RuntimeError):
    pass


class NonFiniteWeights(RuntimeError):
    pass


class NonFiniteEvaluation(RuntimeError):
    pass


class TooManyBrokenVideos(RuntimeError):
    pass


def check_broken_share(broken, total, allow):
    """Stop an evaluation where more than half the videos could not be read (a wrong
    --features_path / --lmdb_dataset scores every blank clip alike), unless `allow`."""
    if 2 * broken > total and not allow:
        raise TooManyBrokenVideos(f"{broken} of {total} test videos could not be read and became blank clips; "
                                  "check --features_path / --lmdb_dataset, or pass --allow_blank_videos 1 to "
                                  "evaluate anyway")


def check_finite_weights(model, epoch):
    """Raise NonFiniteWeights naming the first parameter with a NaN or infinity: weights can diverge
    at an epoch's last step while its loss was still finite."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise NonFiniteWeights(f"parameter {name} is not finite after epoch {epoch}; stopping without "
                                   "writing a checkpoint (the files of earlier epochs are kept)")


def check_loader(task, loader, length, what, args, batch_size=None):
    """Fail at start-up on a split with no samples, a training set smaller than one batch, or videos
    that are not where --features_path / --lmdb_dataset say."""
    if length == 0:
        raise ValueError(f"the {what} split is empty: check the annotation files that list it")
    if len(loader) == 0:
        raise ValueError(f"the {what} split has {length} samples, fewer than one batch of --batch_size "
                         f"{batch_size} per process: lower --batch_size or add samples")
    check_video_source(task.video_paths(loader.dataset), lmdb_path=args.lmdb_dataset)


def seed_everything(seed):
    """Python, numpy and torch RNGs; seeds derived per epoch and rank wrap into numpy's range."""
    seed %= 2 ** 32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_batch(batch, device):
    return [t.to(device, non_blocking=True) for t in batch]


def micro_batch_groups(loader, size, device, keep_incomplete):
    """Yield lists of `size` micro-batches moved to `device`; an epoch's last, shorter group is
    yielded when `keep_incomplete` (retrieval) and dropped otherwise (X-CLIP, as its original)."""
    group = []
    for batch in loader:
        group.append(move_batch(batch, device))
        if len(group) == size:
            yield group
            group = []
    if group and keep_incomplete:
        yield group


def steps_per_epoch(task, num_batches, accumulation):
    return math.ceil(num_batches / accumulation) if task.keep_incomplete_steps else num_batches // accumulation


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def log_training(writer, scalars, epoch, step, steps, global_step):
    """One log line and the `train/*` TensorBoard scalars of a step."""
    logger.info("epoch %d step %d/%d global %d: %s", epoch, step, steps, global_step,
                " ".join(f"{name} {value:.4g}" for name, value in scalars.items()))
    if writer is not None:
        for name, value in scalars.items():
            writer.add_scalar(f"train/{name}", value, global_step)


def optimizer_step(model, optimizer, scaler, clip_grad_norm):
    """Unscale, clip the global gradient norm (when > 0), step, and zero the gradients."""
    scaler.unscale_(optimizer)
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(task, model, loader, optimizer, schedule, scaler, device, epoch, global_step, args, writer):
    """One pass over the training set; returns (global_step, mean loss, broken videos seen).

    FIX: the original zeroed gradients every micro-step, so with --gradient_accumulation_steps > 1
    only the last micro-batch counted; here the micro-batches of a step act as one batch."""
    model.train()
    plain = unwrap(model)
    autocast = autocast_context(args.precision, device)
    steps = steps_per_epoch(task, len(loader), args.gradient_accumulation_steps)
    losses, broken, end = [], 0, time.time()
    groups = micro_batch_groups(loader, args.gradient_accumulation_steps, device, task.keep_incomplete_steps)
    for step, micro_batches in enumerate(tqdm(groups, total=steps, desc=f"epoch {epoch}",
                                              disable=not du.is_main_process())):
        data_time = time.time() - end
        broken += sum(task.broken_videos(batch) for batch in micro_batches)
        if schedule is not None:  # BertAdam schedules itself
            schedule.set_step(global_step)
        loss = task.backward(model, micro_batches, autocast, scaler)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at global step {global_step + 1} (epoch {epoch}, step "
                                f"{step + 1} of {steps}); stopping without writing a checkpoint")
        optimizer_step(model, optimizer, scaler, args.clip_grad_norm)
        task.after_step(plain)
        global_step += 1
        losses.append(loss.item())
        if global_step % args.n_display == 0 and du.is_main_process():
            scalars = {**task.loss_scalars(loss.item()), "data_time": data_time,
                       "batch_time": time.time() - end, **task.model_scalars(plain), "lr": logged_lr(optimizer)}
            log_training(writer, scalars, epoch, step + 1, steps, global_step)
        end = time.time()
    return global_step, float(np.mean(losses)), broken


def checkpoint_state(task, model, optimizer, scaler, epoch, global_step, best, args):
    state = {"epoch": epoch, "global_step": global_step, "arch": task.arch, "state_dict": model.state_dict(),
             "best_acc1": best, "optimizer": optimizer.state_dict(), "hparams": vars(args),
             "clip_config": clip_config_dict(unwrap(model))}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def log_summary(task, output_dir):
    """The last and the best evaluation of the run (results.jsonl), and which one ckpt.best holds."""
    with open(os.path.join(output_dir, "results.jsonl")) as f:
        results = [result for result in map(json.loads, f) if result.get("epoch") is not None]
    best = results[0]
    for result in results:  # on a tie the later epoch, as ckpt.best
        best = result if task.score(result) >= task.score(best) else best
    last = results[-1]
    logger.info("last epoch %s: %s", last["epoch"], task.summary(last))
    logger.info("best epoch %s: %s (ckpt.best.pth.tar holds it)", best["epoch"], task.summary(best))


def end_of_epoch(task, model, optimizer, scaler, test_loader, device, args, writer, epoch, global_step, best):
    """Evaluate, log val/* scalars, save ckpt.pth.tar and, when best, ckpt.best.pth.tar; with
    --save_freq n a copy ckpt_epoch_<e>.pth.tar every n epochs and at the last. Nothing is written
    when the weights or the evaluation are not finite (the task's evaluation checks its own)."""
    check_finite_weights(model, epoch)
    metrics = task.evaluate(model, test_loader, device, args, epoch)
    for name, value in task.tensorboard_metrics(metrics).items():
        writer.add_scalar(f"val/{name}", value, global_step)
    score = task.score(metrics)
    is_best = score >= best  # on a tie the later epoch wins, as the original
    best = max(best, score)
    state = checkpoint_state(task, model, optimizer, scaler, epoch + 1, global_step, best, args)
    path = os.path.join(args.output_dir, "ckpt.pth.tar")
    save_checkpoint(state, path)
    if is_best:
        copy_checkpoint(path, os.path.join(args.output_dir, "ckpt.best.pth.tar"))
    if args.save_freq and (epoch % args.save_freq == 0 or epoch == args.epochs - 1):  # X-CLIP's SAVE_FREQ rule
        copy_checkpoint(path, os.path.join(args.output_dir, f"ckpt_epoch_{epoch}.pth.tar"))
    return best


def evaluation_loader(task, args):
    """The task's evaluation loader, checked to hold samples."""
    loader, length = task.eval_loader(args)
    check_loader(task, loader, length, "test", args)
    return loader


def check_resumable(checkpoint, args):
    """A training checkpoint's optimizer state only fits the optimizer it was written by."""
    saved = checkpoint.get("hparams", {}).get("optim")
    if saved is not None and saved != args.optim:
        raise ValueError(f"--resume {args.resume}: the checkpoint was trained with --optim {saved}, this run asks "
                         f"for --optim {args.optim}; pass --optim {saved}, or --load_from_pretrained 1 to take "
                         "only its weights")


def forget_replayed_results(output_dir, start_epoch):
    """After a resume, drop the results.jsonl lines of epochs that will run again (an evaluation
    written before a crash that came before its checkpoint)."""
    path = os.path.join(output_dir, "results.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if (json.loads(line).get("epoch") or 0) < start_epoch]
    if len(kept) < len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


def restore_training_state(task, checkpoint, optimizer, scaler, args):
    """Optimizer and scaler state of a --resume checkpoint -> (start epoch, global step, best score).
    An optimizer state that does not fit this optimizer (e.g. an original checkpoint of another
    layout) is skipped with a warning: training goes on from the weights with a fresh optimizer."""
    state, reason = task.optimizer_state(checkpoint["optimizer"], optimizer)
    if state is None:
        logger.warning("the optimizer state of %s is not resumed (%s); the optimizer starts afresh", args.resume,
                       reason)
    else:
        optimizer.load_state_dict(state)
    if "scaler" in checkpoint and scaler.is_enabled():
        scaler.load_state_dict(checkpoint["scaler"])
    start_epoch, global_step, best = checkpoint["epoch"], checkpoint["global_step"], checkpoint["best_acc1"]
    logger.info("resumed at epoch %d, global step %d (best %.2f)", start_epoch, global_step, best)
    return start_epoch, global_step, best


def wrap_distributed(model, device):
    """DDP without find_unused_parameters: parameters a model never uses do not require gradients."""
    if not du.is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train(task, model, device, args, checkpoint, main_work):
    """Train for --epochs, evaluating and checkpointing after every epoch on rank 0 while the other
    ranks wait (`main_work`: a `distributed.MainProcessWork`)."""
    if checkpoint is not None and not args.load_from_pretrained:
        check_resumable(checkpoint, args)
    train_loader, train_length, sampler = task.train_loader(args)
    check_loader(task, train_loader, train_length, "training", args, args.batch_size)
    test_loader = evaluation_loader(task, args)
    logger.info("training on %d samples: %d batches per epoch, %d optimizer steps per epoch", train_length,
                len(train_loader), steps_per_epoch(task, len(train_loader), args.gradient_accumulation_steps))
    optimizer, schedule = task.build_optimizer(model, args, len(train_loader))
    scaler = grad_scaler(args.precision, device)
    start_epoch, global_step, best = 0, 0, 0.0
    if checkpoint is not None and not args.load_from_pretrained:
        start_epoch, global_step, best = restore_training_state(task, checkpoint, optimizer, scaler, args)
        if start_epoch >= args.epochs:
            logger.info("nothing left to train: %s finished epoch %d of --epochs %d", args.resume, start_epoch,
                        args.epochs)
            return
    wrapped = wrap_distributed(model, device)
    writer = None
    if du.is_main_process():
        forget_replayed_results(args.output_dir, start_epoch)
        # On a resume, purge_step drops the events a crashed run logged after its last checkpoint.
        writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard"),
                               purge_step=global_step + 1 if global_step else None)
    for epoch in range(start_epoch, args.epochs):
        # Seeded per epoch and rank, so a resumed run draws the same data order and frames.
        seed_everything((args.seed + epoch) * args.world_size + args.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        global_step, loss, broken = train_one_epoch(task, wrapped, train_loader, optimizer, schedule, scaler,
                                                    device, epoch, global_step, args, writer)
        logger.info("epoch %d: mean loss %.4f, %d broken video(s) replaced by blank clips", epoch, loss, broken)
        # Rank 0 evaluates and saves; the others get None back and never read `best`.
        best = main_work.run(lambda: end_of_epoch(task, model, optimizer, scaler, test_loader, device, args,
                                                  writer, epoch, global_step, best))
    if writer is not None:
        writer.close()
        log_summary(task, args.output_dir)
