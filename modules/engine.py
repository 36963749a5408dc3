"""The training engine shared by every task: epochs, optimizer steps, checkpoints, logging.

A task (`modules/tasks/`) says what a step's loss is and how to evaluate; this file does the rest
once for all of them: micro-batch accumulation, the scaler, gradient clipping, the schedule,
TensorBoard, `results.jsonl` (written by the task's evaluation), `ckpt.pth.tar` / `ckpt.best.pth.tar`
and `--resume`.
"""
import logging
import math
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from modules import distributed as du
from modules.checkpoint import save_checkpoint
from modules.precision import autocast_context, grad_scaler

logger = logging.getLogger("centerclip")


class NonFiniteLoss(RuntimeError):
    pass


def seed_everything(seed):
    """Python, numpy and torch RNGs; seeds derived per epoch and rank wrap into numpy's range."""
    seed %= 2 ** 32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_batch(batch, device):
    return [t.to(device, non_blocking=True) for t in batch]


def micro_batch_groups(loader, size, device):
    """Yield lists of `size` micro-batches (the last may be shorter), moved to `device`."""
    group = []
    for batch in loader:
        group.append(move_batch(batch, device))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


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
    steps = math.ceil(len(loader) / args.gradient_accumulation_steps)
    losses, broken, end = [], 0, time.time()
    groups = micro_batch_groups(loader, args.gradient_accumulation_steps, device)
    for step, micro_batches in enumerate(tqdm(groups, total=steps, desc=f"epoch {epoch}",
                                              disable=not du.is_main_process())):
        data_time = time.time() - end
        broken += sum(task.broken_videos(batch) for batch in micro_batches)
        lr = schedule.set_step(global_step)
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
                       "batch_time": time.time() - end, **task.model_scalars(plain), "lr": lr}
            log_training(writer, scalars, epoch, step + 1, steps, global_step)
        end = time.time()
    return global_step, float(np.mean(losses)), broken


def checkpoint_state(task, model, optimizer, scaler, epoch, global_step, best, args):
    state = {"epoch": epoch, "global_step": global_step, "arch": task.arch, "state_dict": model.state_dict(),
             "best_acc1": best, "optimizer": optimizer.state_dict(), "hparams": vars(args)}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def end_of_epoch(task, model, optimizer, scaler, test_loader, device, args, writer, epoch, global_step, best):
    """Evaluate, log val/* scalars, save ckpt.pth.tar and, when best, ckpt.best.pth.tar."""
    metrics = task.evaluate(model, test_loader, device, args, epoch)
    for name, value in task.tensorboard_metrics(metrics).items():
        writer.add_scalar(f"val/{name}", value, global_step)
    score = task.score(metrics)
    is_best = score > best
    best = max(best, score)
    state = checkpoint_state(task, model, optimizer, scaler, epoch + 1, global_step, best, args)
    save_checkpoint(state, os.path.join(args.output_dir, "ckpt.pth.tar"))
    if is_best:
        save_checkpoint(state, os.path.join(args.output_dir, "ckpt.best.pth.tar"))
    return best


def restore_training_state(checkpoint, optimizer, scaler):
    """Optimizer and scaler state of a --resume checkpoint -> (start epoch, global step, best score)."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    if "scaler" in checkpoint and scaler.is_enabled():
        scaler.load_state_dict(checkpoint["scaler"])
    start_epoch, global_step, best = checkpoint["epoch"], checkpoint["global_step"], checkpoint["best_acc1"]
    logger.info("resumed at epoch %d, global step %d (best %.2f)", start_epoch, global_step, best)
    return start_epoch, global_step, best


def wrap_distributed(task, model, device, args):
    if not du.is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=task.find_unused_parameters(args))


def train(task, model, device, args, checkpoint):
    """Train for --epochs, evaluating and checkpointing (rank 0) after every epoch."""
    train_loader, train_length, sampler = task.train_loader(args)
    test_loader, _ = task.eval_loader(args)
    total_steps = math.ceil(len(train_loader) / args.gradient_accumulation_steps) * args.epochs
    logger.info("training on %d samples: %d batches per epoch, %d optimizer steps", train_length,
                len(train_loader), total_steps)
    optimizer, schedule = task.build_optimizer(model, args, total_steps)
    scaler = grad_scaler(args.precision, device)
    start_epoch, global_step, best = 0, 0, 0.0
    if checkpoint is not None and not args.load_from_pretrained:
        start_epoch, global_step, best = restore_training_state(checkpoint, optimizer, scaler)
    wrapped = wrap_distributed(task, model, device, args)
    writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard")) if du.is_main_process() else None
    for epoch in range(start_epoch, args.epochs):
        # Seeded per epoch and rank, so a resumed run draws the same data order and frames.
        seed_everything((args.seed + epoch) * args.world_size + args.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        global_step, loss, broken = train_one_epoch(task, wrapped, train_loader, optimizer, schedule, scaler,
                                                    device, epoch, global_step, args, writer)
        logger.info("epoch %d: mean loss %.4f, %d broken video(s) replaced by blank clips", epoch, loss, broken)
        if du.is_main_process():
            best = end_of_epoch(task, model, optimizer, scaler, test_loader, device, args, writer, epoch,
                                global_step, best)
        if du.is_distributed():
            dist.barrier()
    if writer is not None:
        writer.close()
