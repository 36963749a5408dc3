"""Train and evaluate CenterCLIP for text-video retrieval.

    python main.py --output_dir OUT [flags]                       # one process (CPU or one GPU)
    torchrun --nproc_per_node N main.py --output_dir OUT [flags]  # DDP, multi-node by torchrun's flags

`python params.py --help` lists the flags. Every evaluation writes OUT/metrics.json and
OUT/sim_matrix.npy; training also writes log.txt, hparams_train.json, results.jsonl, TensorBoard
scalars under OUT/tensorboard, and ckpt.pth.tar / ckpt.best.pth.tar.
"""
import json
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

import params
from dataloaders import DATALOADERS, count_broken_videos
from modules import distributed as du
from modules.accumulation import accumulated_backward
from modules.checkpoint import load_model_weights, model_state_from_checkpoint, read_checkpoint, save_checkpoint
from modules.clip import SCRATCH_MODELS, convert_weights_to_fp16, load_clip_state_dict, random_clip_state_dict
from modules.factory import create_model
from modules.metrics import dual_softmax, retrieval_metrics
from modules.optim import build_optimizer, freeze_clip_layers, warmup_cosine
from modules.precision import autocast_context, grad_scaler
from modules.tokenizer import SimpleTokenizer

logger = logging.getLogger("centerclip")
LOGIT_SCALE_RANGE = (0.1, 4.6052)  # [0.1, ln 100], as the original clamps it


class NonFiniteLoss(RuntimeError):
    pass


def init_distributed(args):
    """Join torchrun's env:// group when launched by it (nccl on CUDA, gloo on CPU); pick the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = args.dist_backend if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    if torch.cuda.is_available():
        torch.cuda.set_device(args.local_rank)
        device = torch.device("cuda", args.local_rank)
    else:
        device = torch.device("cpu")
    args.world_size, args.rank = du.get_world_size(), du.get_rank()
    args.n_gpu = args.world_size if device.type == "cuda" else 0
    return device


def setup_output(args):
    """Output folder, log.txt and console logging (rank 0 logs at --debug/INFO, others warn)."""
    os.makedirs(args.output_dir, exist_ok=True)
    handlers = [logging.StreamHandler()]
    if du.is_main_process():
        handlers.append(logging.FileHandler(os.path.join(args.output_dir, "log.txt")))
        params.save_hparams(args, args.output_dir)
    logging.basicConfig(level=args.log_level if du.is_main_process() else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_path(args):
    return os.path.join(args.output_dir, "ckpt.pth.tar") if args.resume == "latest" else args.resume


def clip_weights(args, checkpoint):
    """CLIP from --pretrained_dir; when the file is absent but a checkpoint is given, CLIP is rebuilt
    from the checkpoint's own `clip.*` weights (its cluster tables are loaded with the model).
    Sizes trained from scratch (`demo-small`) start from OpenAI's random initialisation."""
    if args.pretrained_clip_name in SCRATCH_MODELS:
        return random_clip_state_dict(args.pretrained_clip_name, seed=args.seed)
    try:
        return load_clip_state_dict(args.pretrained_clip_name, args.pretrained_dir, download=bool(args.download_clip))
    except FileNotFoundError as err:
        if checkpoint is None:
            raise
        logger.warning("%s\nbuilding CLIP from the checkpoint's clip.* weights instead", err)
    state = model_state_from_checkpoint(checkpoint)
    return {k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.") and "tokencluster_inter" not in k}


def build_model(args):
    """The model of the flags with the weights of --init_model, then of --resume, loaded.
    Returns (model, the --resume checkpoint or None)."""
    checkpoint = read_checkpoint(resume_path(args)) if args.resume else None
    model = create_model(args, clip_weights(args, checkpoint))
    if args.init_model:
        load_model_weights(model, read_checkpoint(args.init_model))
    if checkpoint is not None:
        load_model_weights(model, checkpoint)
    return model, checkpoint


def move_batch(batch, device):
    return [t.to(device, non_blocking=True) for t in batch]


def encode_test_set(model, loader, device, autocast, cut_off_points):
    """Text features of every caption and video features of every video, batch by batch. In
    multi-sentence mode a video is encoded with the batch holding its last caption."""
    texts, videos, masks, offset, broken = [], [], [], 0, 0
    for batch in tqdm(loader, desc="encoding", disable=not du.is_main_process()):
        input_ids, _, _, video, video_mask = move_batch(batch, device)
        with autocast():
            texts.append(model.encode_text(input_ids))
            if cut_off_points is not None:
                rows = [i - offset for i in cut_off_points if offset <= i < offset + len(input_ids)]
                offset += len(input_ids)
                video, video_mask = video[rows], video_mask[rows]
            if len(video):
                broken += count_broken_videos(video_mask)
                features, mask = model.encode_video(video, video_mask)
                videos.append(features)
                masks.append(mask)
    return texts, videos, masks, broken


def multi_sentence_cut_off_points(dataset):
    """Index of each video's last caption when the test set has several captions per video, else None."""
    return dataset.cut_off_points if getattr(dataset, "multi_sentence_per_video", False) else None


def similarity_matrix(model, texts, videos, masks, autocast):
    """[n_text, n_video] float32 logits (including exp(logit_scale)), block by block."""
    rows = []
    for text in texts:
        with autocast():
            rows.append(torch.cat([model.similarity(text, v, m).float() for v, m in zip(videos, masks)], dim=1))
    return torch.cat(rows).cpu().numpy()


def log_metrics(metrics):
    for direction, title, prefix in (("t2v", "Text-to-Video", ""), ("v2t", "Video-to-Text", "V2T$")):
        m = metrics[direction]
        logger.info("%s:", title)
        logger.info("\t>>>  %sR@1: %.1f - %sR@5: %.1f - %sR@10: %.1f - %sMedian R: %.1f - %sMean R: %.1f",
                    prefix, m["R1"], prefix, m["R5"], prefix, m["R10"], prefix, m["MR"], prefix, m["MeanR"])


@torch.no_grad()
def evaluate(model, loader, device, args, epoch=None):
    """Encode the test split, score every pair, write metrics.json and sim_matrix.npy, and append
    the metrics to results.jsonl."""
    model.eval()
    cut_off_points = multi_sentence_cut_off_points(loader.dataset)
    texts, videos, masks, broken = encode_test_set(model, loader, device, autocast_context(args.precision, device),
                                                   cut_off_points)
    sim = similarity_matrix(model, texts, videos, masks, autocast_context(args.precision, device))
    logger.info("similarity matrix %d x %d; %d broken video(s) replaced by blank clips", *sim.shape, broken)
    if args.camoe_dsl:
        sim = dual_softmax(sim)
    metrics = retrieval_metrics(sim, cut_off_points)
    log_metrics(metrics)
    np.save(os.path.join(args.output_dir, "sim_matrix.npy"), sim)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(args.output_dir, "results.jsonl"), "a") as f:
        f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
    return metrics


@torch.no_grad()
def inference_speed_test(model, loader, device, args):
    """Time the encoding of the whole test split (no similarity, no metrics)."""
    model.eval()
    start = time.time()
    _, videos, _, _ = encode_test_set(model, loader, device, autocast_context(args.precision, device),
                                      multi_sentence_cut_off_points(loader.dataset))
    seconds = time.time() - start
    count = sum(len(v) for v in videos)
    logger.info("inference speed: %d videos in %.2f s = %.2f videos/s", count, seconds, count / seconds)
    return count / seconds


def log_training(writer, model, loss, lr, data_time, batch_time, epoch, step, steps, global_step):
    scale = model.clip.logit_scale.exp().item()
    logger.info("epoch %d step %d/%d global %d: loss %.4f lr %.3g scale %.2f data %.3fs batch %.3fs",
                epoch, step, steps, global_step, loss, lr, scale, data_time, batch_time)
    if writer is not None:
        # The original logs its deep-cluster loss as train/cluster_loss; k-medoids and spectral
        # clustering have no loss, so it is 0 (kept so runs line up with the original's dashboards).
        for name, value in (("sim_loss", loss), ("cluster_loss", 0.0), ("data_time", data_time),
                            ("batch_time", batch_time), ("scale", scale), ("lr", lr)):
            writer.add_scalar(f"train/{name}", value, global_step)


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


def backward(model, micro_batches, autocast, scaler):
    """Forward and backward of one optimizer step; returns the loss. Several micro-batches are
    taken as one batch of their total size (modules/accumulation.py)."""
    if len(micro_batches) > 1:
        return accumulated_backward(model, micro_batches, autocast, scaler)
    with autocast():
        loss = model(*micro_batches[0])
    if torch.isfinite(loss):
        scaler.scale(loss).backward()
    return loss.detach()


def train_one_epoch(model, loader, optimizer, schedule, scaler, device, epoch, global_step, total_steps, args,
                    writer):
    """One pass over the training set; returns (global_step, mean loss, broken videos seen).

    FIX: the original zeroed gradients every micro-step, so with --gradient_accumulation_steps > 1
    only the last micro-batch counted; here the micro-batches of a step act as one batch."""
    model.train()
    plain = model.module if isinstance(model, DistributedDataParallel) else model
    autocast = autocast_context(args.precision, device)
    steps = math.ceil(len(loader) / args.gradient_accumulation_steps)
    losses, broken, end = [], 0, time.time()
    groups = micro_batch_groups(loader, args.gradient_accumulation_steps, device)
    for step, micro_batches in enumerate(tqdm(groups, total=steps, desc=f"epoch {epoch}",
                                              disable=not du.is_main_process())):
        data_time = time.time() - end
        broken += sum(count_broken_videos(batch[4]) for batch in micro_batches)
        lr = schedule.set_step(global_step) if schedule else args.lr * warmup_cosine(
            global_step / total_steps, args.warmup_proportion)
        loss = backward(model, micro_batches, autocast, scaler)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at global step {global_step + 1} (epoch {epoch}, step "
                                f"{step + 1} of {steps}); stopping without writing a checkpoint")
        scaler.unscale_(optimizer)
        if args.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        plain.clip.logit_scale.data.clamp_(*LOGIT_SCALE_RANGE)
        global_step += 1
        losses.append(loss.item())
        if global_step % args.n_display == 0 and du.is_main_process():
            log_training(writer, plain, loss.item(), lr, data_time, time.time() - end, epoch, step + 1, steps,
                         global_step)
        end = time.time()
    return global_step, float(np.mean(losses)), broken


def checkpoint_state(model, optimizer, scaler, epoch, global_step, best, args):
    state = {"epoch": epoch, "global_step": global_step, "arch": "centerclip", "state_dict": model.state_dict(),
             "best_acc1": best, "optimizer": optimizer.state_dict(), "hparams": vars(args)}
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def train(args, model, device, tokenizer, test_loader, checkpoint):
    train_loader, train_length, sampler = DATALOADERS[args.datatype]["train"](args, tokenizer)
    total_steps = math.ceil(len(train_loader) / args.gradient_accumulation_steps) * args.epochs
    logger.info("training on %d samples: %d batches per epoch, %d optimizer steps", train_length,
                len(train_loader), total_steps)
    optimizer, schedule = build_optimizer(model, args.optim, args.lr, args.coef_lr, args.wd, (args.beta1, args.beta2),
                                          args.eps, total_steps, args.warmup_proportion, args.new_added_modules)
    scaler = grad_scaler(args.precision, device)
    start_epoch, global_step, best = 0, 0, 0.0
    if checkpoint is not None and not args.load_from_pretrained:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if "scaler" in checkpoint and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, global_step, best = checkpoint["epoch"], checkpoint["global_step"], checkpoint["best_acc1"]
        logger.info("resumed at epoch %d, global step %d (best T2V R@1 %.2f)", start_epoch, global_step, best)
    wrapped = model
    if du.is_distributed():
        unused = bool(args.cluster_frame_embedding) or args.sim_header == "seqLSTM"  # tables the forward never uses
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=unused)
    writer = SummaryWriter(os.path.join(args.output_dir, "tensorboard")) if du.is_main_process() else None
    for epoch in range(start_epoch, args.epochs):
        # Seeded per epoch and rank, so a resumed run draws the same data order and frames.
        seed_everything((args.seed + epoch) * args.world_size + args.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        global_step, loss, broken = train_one_epoch(wrapped, train_loader, optimizer, schedule, scaler, device,
                                                    epoch, global_step, total_steps, args, writer)
        logger.info("epoch %d: mean loss %.4f, %d broken video(s) replaced by blank clips", epoch, loss, broken)
        if du.is_main_process():
            best = end_of_epoch(model, optimizer, scaler, test_loader, device, args, writer, epoch, global_step, best)
        if du.is_distributed():
            dist.barrier()
    if writer is not None:
        writer.close()


def end_of_epoch(model, optimizer, scaler, test_loader, device, args, writer, epoch, global_step, best):
    """Evaluate, log val/* scalars and results.jsonl, save ckpt.pth.tar and, when best, ckpt.best.pth.tar."""
    metrics = evaluate(model, test_loader, device, args, epoch)
    for name, value in metrics["t2v"].items():
        writer.add_scalar(f"val/{name}", value, global_step)
    is_best = metrics["t2v"]["R1"] > best
    best = max(best, metrics["t2v"]["R1"])
    state = checkpoint_state(model, optimizer, scaler, epoch + 1, global_step, best, args)
    save_checkpoint(state, os.path.join(args.output_dir, "ckpt.pth.tar"))
    if is_best:
        save_checkpoint(state, os.path.join(args.output_dir, "ckpt.best.pth.tar"))
    return best


def main(argv=None):
    args = params.get_args(argv)
    device = init_distributed(args)
    setup_output(args)
    seed_everything(args.seed + args.rank)
    model, checkpoint = build_model(args)
    if args.do_train:
        freeze_clip_layers(model.clip, args.freeze_layer_num, bool(args.freeze_clip))
    if args.precision == "fp16":
        convert_weights_to_fp16(model.clip)
    model.to(device)
    tokenizer = SimpleTokenizer()
    test_loader, test_length = DATALOADERS[args.datatype]["test"](args, tokenizer)
    logger.info("test split of %s: %d captions", args.datatype, test_length)
    if args.inference_speed_test:
        if du.is_main_process():
            inference_speed_test(model, test_loader, device, args)
    elif args.do_train:
        train(args, model, device, tokenizer, test_loader, checkpoint)
    elif du.is_main_process():
        evaluate(model, test_loader, device, args)
    if du.is_distributed():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
