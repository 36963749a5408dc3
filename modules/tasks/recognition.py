"""Video recognition (X-CLIP) as a task of the engine: the model, the list-file loaders, the
original's training step (mixup/cutmix, its losses, 8 AdamW groups, timm's cosine schedule), and
multi-view evaluation (top-1/top-5, metrics.json, scores.npy, results.jsonl), over one list or over
the splits of a zero-shot protocol (mean ± std)."""
import json
import logging
import os

import numpy as np
import torch
from tqdm import tqdm

from dataloaders import RECOGNITION_EVAL_LOADERS, RECOGNITION_TRAIN_LOADERS
from dataloaders.protocols import zero_shot_pairs, zero_shot_summary
from dataloaders.video_list import read_class_names
from modules import distributed as du
from modules.engine import NonFiniteEvaluation, check_broken_share, move_batch
from modules.factory import build_recognition_model
from modules.optim import build_xclip_optimizer, map_optimizer_state
from modules.precision import autocast_context
from modules.tasks.xclip_config import unused_keys
from modules.xclip import tokenize_class_names
from modules.xclip_train import freeze_text_tower, recognition_backward, recognition_loss

logger = logging.getLogger("centerclip")
TOP_K = (1, 5)


class RecognitionTask:
    arch = "xclip"
    keep_incomplete_steps = False  # as the original: an epoch's leftover micro-batches are dropped

    def __init__(self, args):
        """The evaluation suites: (list file, labels CSV, token ids [K, 77]) of --val_list, or of each
        zero-shot split; and the training classes of --labels_csv."""
        pairs = (zero_shot_pairs(args.zero_shot_lists, args.zero_shot_labels) if args.zero_shot_lists
                 else [(args.val_list, args.labels_csv)])
        self.suites = [(path, csv, tokenize_class_names(read_class_names(csv))) for path, csv in pairs]
        # The training classes (an eval-only zero-shot run reads only its own lists' CSVs).
        self.class_names = read_class_names(args.labels_csv) if args.do_train else None
        self.accumulation, self.train_text_ids = args.gradient_accumulation_steps, None
        # Built at start-up, so a bad --mixup / --cutmix / --label_smooth fails before anything runs.
        self.loss = recognition_loss(len(self.class_names), mixup=args.mixup, cutmix=args.cutmix,
                                     switch_prob=args.mixup_switch_prob,
                                     label_smooth=args.label_smooth) if args.do_train else None
        if args.config and unused_keys(args.xclip_config):
            logger.warning("%s sets %s, which this version does not use", args.config,
                           ", ".join(unused_keys(args.xclip_config)))
        configured = args.xclip_config["DATA.NUM_CLASSES"] if args.config else None
        if configured is not None and self.class_names and configured != len(self.class_names):
            logger.warning("DATA.NUM_CLASSES is %d but %s lists %d classes; the CSV decides", configured,
                           args.labels_csv, len(self.class_names))

    def build_model(self, args, device):
        """X-CLIP from --resume (sizes from its keys) or from CLIP's weights; --init_model weights;
        for training with --fix_text 1 the text tower frozen. Returns (model on device, checkpoint)."""
        model, checkpoint = build_recognition_model(args)
        if args.do_train and args.fix_text:
            freeze_text_tower(model)
        if args.use_checkpoint and args.do_train:
            model.visual.use_checkpoint()
            logger.info("--use_checkpoint: the vision blocks train in %d checkpointed segments",
                        model.visual.checkpoint_segments)
        if args.precision == "fp16":
            model.half()
        self.train_text_ids = tokenize_class_names(self.class_names).to(device) if self.class_names else None
        return model.to(device), checkpoint

    def train_loader(self, args):
        subset = os.path.join(args.output_dir, "few_shot_train_list.txt") if args.shots else None
        loader, class_names, sampler = RECOGNITION_TRAIN_LOADERS[args.datatype](
            list_path=args.train_list, root=args.features_path, labels_csv=args.labels_csv,
            lmdb_path=args.lmdb_dataset, num_frames=args.max_frames, input_size=args.image_resolution,
            batch_size=args.batch_size, num_workers=args.num_thread_reader, color_jitter=args.color_jitter,
            gray_scale=args.gray_scale, shots=args.shots, seed=args.seed, subset_path=subset)
        if class_names != self.class_names:
            raise ValueError(f"the training loader's classes differ from --labels_csv {args.labels_csv}")
        if subset:
            logger.info("few-shot: %d videos per class, the list used is in %s", args.shots, subset)
        return loader, len(loader.dataset), sampler

    def eval_loader(self, args, suite=0):
        path, csv, text_ids = self.suites[suite]
        loader, _ = RECOGNITION_EVAL_LOADERS[args.datatype](
            list_path=path, root=args.features_path, labels_csv=csv, lmdb_path=args.lmdb_dataset,
            num_frames=args.max_frames, num_clips=args.num_clips, num_crops=args.num_crops,
            input_size=args.image_resolution, batch_size=args.batch_size_val, num_workers=args.num_thread_reader)
        logger.info("%s: %d videos, %d classes, %d clip(s) x %d crop(s) per video", path, len(loader.dataset),
                    len(text_ids), args.num_clips, args.num_crops)
        return loader, len(loader.dataset)

    def build_optimizer(self, model, args, batches_per_epoch):
        """The original's AdamW (8 groups, 10x lr for the new parts) and timm's cosine schedule."""
        return build_xclip_optimizer(model, lr=args.lr, weight_decay=args.wd, epochs=args.epochs,
                                     warmup_epochs=args.warmup_epochs, micro_batches_per_epoch=batches_per_epoch,
                                     accumulation=args.gradient_accumulation_steps)

    @staticmethod
    def optimizer_state(saved, optimizer):
        """Ours or the original's released `optimizer` entry (same 8 groups, same order), fitted."""
        return map_optimizer_state(saved, optimizer)

    def backward(self, model, micro_batches, autocast, scaler):
        """One optimizer step as the original: each micro-batch blended (mixup/cutmix), its loss / A
        back-propagated; returns the step's loss."""
        return recognition_backward(model, micro_batches, self.train_text_ids, self.loss,
                                    accumulation=self.accumulation, autocast=autocast, scaler=scaler)

    @staticmethod
    def after_step(model):
        """Nothing: X-CLIP never clamps logit_scale."""

    @staticmethod
    def loss_scalars(loss):
        return {"loss": loss}

    @staticmethod
    def model_scalars(model):
        return {}

    @staticmethod
    def broken_videos(batch):
        return int((batch[2] == 0).sum())

    @staticmethod
    def video_paths(dataset):
        return [video.path for video in dataset.videos[:50]]

    @staticmethod
    def tensorboard_metrics(metrics):
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    @staticmethod
    def summary(metrics):
        return f"top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}"

    @staticmethod
    def score(metrics):
        """The number that decides ckpt.best: top-1 accuracy (the splits' mean in zero-shot)."""
        return metrics["top1"]

    @torch.no_grad()
    def evaluate(self, model, loader, device, args, epoch=None):
        """Score every video of the list (every view's softmax, averaged over the views), write
        metrics.json {"top1", "top5"} (percent), scores.npy [videos, classes] in list order, and a
        line of results.jsonl. Zero-shot: every split in turn (scores_<i>.npy), then the mean and
        population std of top-1 over the splits."""
        model.eval()
        splits = []
        for i in range(len(self.suites)):
            split_loader = loader if i == 0 else self.eval_loader(args, suite=i)[0]
            splits.append(self.evaluate_split(model, split_loader, device, args, i))
        if len(splits) == 1:
            metrics, broken = {k: splits[0][k] for k in ("top1", "top5")}, splits[0]["broken_videos"]
        else:
            metrics, broken = zero_shot_metrics(splits), sum(s["broken_videos"] for s in splits)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(os.path.join(args.output_dir, "results.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics, "broken_videos": broken}) + "\n")
        return metrics

    def evaluate_split(self, model, loader, device, args, suite):
        path, _, text_ids = self.suites[suite]
        summed, labels, broken = video_scores(model, loader, text_ids.to(device), device,
                                              autocast_context(args.precision, device))
        check_broken_share(broken, len(labels), args.allow_blank_videos)
        if not np.isfinite(summed).all():
            raise NonFiniteEvaluation("the class scores hold non-finite values (diverged weights?); nothing is "
                                      "written")
        metrics = top_k_accuracy(summed, labels)  # ranked on the sum over views, as the original
        logger.info("%s: top-1 %.2f top-5 %.2f on %d videos (broken videos: %d of %d)", path, metrics["top1"],
                    metrics["top5"], len(labels), broken, len(labels))
        name = "scores.npy" if len(self.suites) == 1 else f"scores_{suite}.npy"
        np.save(os.path.join(args.output_dir, name), summed / (args.num_clips * args.num_crops))
        return {**metrics, "broken_videos": broken, "list": path}


def zero_shot_metrics(splits):
    """Mean ± population std (numpy, ddof 0) of top-1 over the splits, the mean top-5, and each split."""
    top1, top1_std = zero_shot_summary([s["top1"] for s in splits])
    top5 = float(np.mean([s["top5"] for s in splits]))
    logger.info("zero-shot over %d splits: top-1 %.2f ± %.2f, top-5 %.2f", len(splits), top1, top1_std, top5)
    return {"top1": top1, "top1_std": top1_std, "top5": top5, "splits": splits}


def video_scores(model, loader, text_ids, device, autocast):
    """-> (scores float32 [N, K]: the sum over views of each view's softmax, labels int64 [N],
    broken videos). Views are independent samples, so a batch's views run as one batch."""
    scores, labels, broken = [], [], 0
    for video, label, valid in tqdm(loader, desc="evaluating", disable=not du.is_main_process()):
        video, label, valid = move_batch((video, label, valid), device)
        B, V = video.shape[:2]
        with autocast():
            logits = model(video.flatten(0, 1).to(model.dtype), text_ids)  # (B·V, K)
        probabilities = logits.float().softmax(dim=-1).view(B, V, -1)  # (B, V, K)
        scores.append(probabilities.sum(dim=1).cpu())
        labels.append(label.cpu())
        broken += int((valid == 0).sum())
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), broken


def top_k_accuracy(scores, labels):
    """scores [N, K], labels [N] -> {"top1", "top5"}: percent of videos whose label is among the k
    best classes (torch.topk's choice among ties, as the original)."""
    best = torch.from_numpy(scores).topk(min(max(TOP_K), scores.shape[1]), dim=-1).indices  # (N, 5)
    hits = best == torch.from_numpy(labels)[:, None]
    return {f"top{k}": float(hits[:, :k].any(dim=1).float().mean() * 100) for k in TOP_K}
