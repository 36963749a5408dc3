"""Text-video retrieval (CenterCLIP / CLIP4Clip) as a task of the engine: model, loaders, the
loss of a step (symmetric InfoNCE, gradient caching across micro-batches), and evaluation
(similarity matrix, R@k, metrics.json, sim_matrix.npy, results.jsonl)."""
import json
import logging
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from dataloaders import DATALOADERS, count_broken_videos
from modules import distributed as du
from modules.accumulation import accumulated_backward
from modules.clip import convert_weights_to_fp16
from modules.engine import NonFiniteEvaluation, check_broken_share, move_batch
from modules.factory import build_retrieval_model, set_frame_flags
from modules.metrics import dual_softmax, retrieval_metrics
from modules.optim import build_optimizer, freeze_clip_layers, map_optimizer_state, total_optimizer_steps
from modules.tokenizer import SimpleTokenizer

logger = logging.getLogger("centerclip")
LOGIT_SCALE_RANGE = (0.1, 4.6052)  # [0.1, ln 100], as the original clamps it


class RetrievalTask:
    arch = "centerclip"
    keep_incomplete_steps = True  # FIX: an epoch's leftover micro-batches step too (the original drops them)

    def __init__(self, args):
        self.tokenizer = SimpleTokenizer()
        self.loaders = DATALOADERS[args.datatype]

    def build_model(self, args, device):
        """The model of the flags with --init_model / --resume weights, layers frozen for training,
        fp16 weights for --precision fp16. Returns (model on device, the --resume checkpoint or None)."""
        model, checkpoint = build_retrieval_model(args)
        set_frame_flags(args, model.clip.config)
        if args.do_train:
            freeze_clip_layers(model.clip, args.freeze_layer_num, bool(args.freeze_clip))
            if not any(p.requires_grad for p in model.parameters()):
                raise ValueError(f"--freeze_clip 1 freezes all of CLIP and --sim_header {args.sim_header} adds "
                                 "nothing to train; use a head with weights (seqTransf, seqLSTM, tightTransf), "
                                 "--cluster_embedding 1, or --freeze_clip 0")
        if args.precision == "fp16":
            convert_weights_to_fp16(model.clip)
        return model.to(device), checkpoint

    def train_loader(self, args):
        return self.loaders["train"](args, self.tokenizer)

    def eval_loader(self, args):
        loader, length = self.loaders["test"](args, self.tokenizer)
        logger.info("test split of %s: %d captions", args.datatype, length)
        return loader, length

    def build_optimizer(self, model, args, batches_per_epoch):
        """The original's four groups over its schedule length; BertAdam schedules itself (schedule
        None), AdamW gets a CosineSchedule."""
        total_steps = total_optimizer_steps(batches_per_epoch, args.gradient_accumulation_steps, args.epochs)
        logger.info("schedule of %.4g optimizer steps (the original's count)", total_steps)
        return build_optimizer(model, args.optim, args.lr, args.coef_lr, args.wd, (args.beta1, args.beta2),
                               args.eps, total_steps, args.warmup_proportion, args.new_added_modules)

    @staticmethod
    def optimizer_state(saved, optimizer):
        """An optimizer state of ours or of the original fitted to `optimizer`: (state, None) or
        (None, why it does not fit)."""
        return map_optimizer_state(saved, optimizer)

    @staticmethod
    def video_paths(dataset):
        return [pair.video_path for pair in dataset.pairs[:50]]

    @staticmethod
    def broken_videos(batch):
        return count_broken_videos(batch[4])

    @staticmethod
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

    @staticmethod
    def after_step(model):
        model.clip.logit_scale.data.clamp_(*LOGIT_SCALE_RANGE)

    @staticmethod
    def loss_scalars(loss):
        # The original logs its deep-cluster loss as train/cluster_loss; k-medoids and spectral
        # clustering have no loss, so it is 0 (kept so runs line up with the original's dashboards).
        return {"sim_loss": loss, "cluster_loss": 0.0}

    @staticmethod
    def model_scalars(model):
        return {"scale": model.clip.logit_scale.item()}  # the raw (log) value, as the original logs it

    @staticmethod
    def tensorboard_metrics(metrics):
        """val/R1 ... (text-to-video, the original's names) and val/v2t_R1 ... (video-to-text)."""
        return {**metrics["t2v"], **{f"v2t_{name}": value for name, value in metrics["v2t"].items()}}

    @staticmethod
    def summary(metrics):
        t2v, v2t = metrics["t2v"], metrics["v2t"]
        return f"T2V R@1 {t2v['R1']:.2f} R@5 {t2v['R5']:.2f}, V2T R@1 {v2t['R1']:.2f} R@5 {v2t['R5']:.2f}"

    @staticmethod
    def score(metrics):
        """The number that decides ckpt.best: text-to-video R@1."""
        return metrics["t2v"]["R1"]

    @torch.no_grad()
    def evaluate(self, model, loader, device, args, epoch=None):
        """Encode the test split, score every pair, write metrics.json and sim_matrix.npy, and append
        the metrics to results.jsonl. No autocast: the original evaluates in fp32 whatever
        --precision says (under `amp` its weights are fp32; `fp16` keeps its fp16 weights)."""
        model.eval()
        cut_off_points = multi_sentence_cut_off_points(loader.dataset)
        texts, videos, masks, broken = encode_test_set(model, loader, device, cut_off_points)
        num_videos = sum(len(v) for v in videos)
        check_broken_share(broken, num_videos, args.allow_blank_videos)
        sim = similarity_matrix(model, texts, videos, masks)
        if not np.isfinite(sim).all():
            raise NonFiniteEvaluation(f"the similarity matrix holds {int((~np.isfinite(sim)).sum())} non-finite "
                                      "entries (diverged weights?); nothing is written")
        logger.info("similarity matrix %d x %d", *sim.shape)
        if args.camoe_dsl:
            sim = dual_softmax(sim)
        metrics = retrieval_metrics(sim, cut_off_points)
        log_metrics(metrics, broken, num_videos)
        if args.save_feature_path:
            save_features(args.save_feature_path, loader.dataset, cut_off_points, texts, videos, masks)
        np.save(os.path.join(args.output_dir, "sim_matrix.npy"), sim)
        write_metrics(metrics, args.output_dir, epoch, broken)
        return metrics

    @torch.no_grad()
    def inference_speed_test(self, model, loader, device, args):
        """Time the encoding of the whole test split (no similarity, no metrics)."""
        model.eval()
        start = time.time()
        _, videos, _, _ = encode_test_set(model, loader, device, multi_sentence_cut_off_points(loader.dataset))
        seconds = time.time() - start
        count = sum(len(v) for v in videos)
        logger.info("inference speed: %d videos in %.2f s = %.2f videos/s", count, seconds, count / seconds)
        return count / seconds


def save_features(folder, dataset, cut_off_points, texts, videos, masks):
    """The encoded test split: text_features.npy [n_text, D], video_features.npy [n_video, f, D] and
    video_masks.npy [n_video, f] (before the similarity head), with texts.json (the captions) and
    videos.json (the video files) in the same order."""
    os.makedirs(folder, exist_ok=True)
    pairs = dataset.pairs
    rows = cut_off_points if cut_off_points is not None else range(len(pairs))
    arrays = {"text_features": torch.cat(texts).squeeze(1), "video_features": torch.cat(videos),
              "video_masks": torch.cat(masks)}
    for name, array in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), array.float().cpu().numpy())
    lists = {"texts": [pair.captions[0] for pair in pairs], "videos": [pairs[i].video_path for i in rows]}
    for name, items in lists.items():
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(items, f, indent=1)
    logger.info("features of %d texts and %d videos written to %s", len(pairs), len(rows), folder)


def write_metrics(metrics, output_dir, epoch, broken):
    """`metrics.json` (this evaluation) and one line of `results.jsonl` (every evaluation of the run,
    with its count of broken videos)."""
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(output_dir, "results.jsonl"), "a") as f:
        f.write(json.dumps({"epoch": epoch, **metrics, "broken_videos": broken}) + "\n")


def encode_test_set(model, loader, device, cut_off_points):
    """Text features of every caption and video features of every video, batch by batch. In
    multi-sentence mode a video is encoded with the batch holding its last caption."""
    texts, videos, masks, offset, broken = [], [], [], 0, 0
    for batch in tqdm(loader, desc="encoding", disable=not du.is_main_process()):
        input_ids, _, _, video, video_mask = move_batch(batch, device)
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


def similarity_matrix(model, texts, videos, masks):
    """[n_text, n_video] float32 logits (including exp(logit_scale)), block by block."""
    rows = []
    for text in texts:
        rows.append(torch.cat([model.similarity(text, v, m).float() for v, m in zip(videos, masks)], dim=1))
    return torch.cat(rows).cpu().numpy()


def log_metrics(metrics, broken, num_videos):
    for direction, title, prefix in (("t2v", "Text-to-Video", ""), ("v2t", "Video-to-Text", "V2T$")):
        m = metrics[direction]
        logger.info("%s:", title)
        logger.info("\t>>>  %sR@1: %.1f - %sR@5: %.1f - %sR@10: %.1f - %sMedian R: %.1f - %sMean R: %.1f "
                    "(broken videos: %d of %d)", prefix, m["R1"], prefix, m["R5"], prefix, m["R10"], prefix,
                    m["MR"], prefix, m["MeanR"], broken, num_videos)
