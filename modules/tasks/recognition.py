"""Video recognition (X-CLIP) as a task of the engine: the model, the list-file loaders, and
multi-view evaluation (top-1/top-5, metrics.json, scores.npy, results.jsonl)."""
import json
import logging
import os

import numpy as np
import torch
from tqdm import tqdm

from dataloaders import RECOGNITION_EVAL_LOADERS
from dataloaders.video_list import read_class_names
from modules import distributed as du
from modules.engine import NonFiniteEvaluation, check_broken_share, move_batch
from modules.factory import build_recognition_model
from modules.precision import autocast_context
from modules.tasks.xclip_config import unused_keys
from modules.xclip import tokenize_class_names

logger = logging.getLogger("centerclip")
TOP_K = (1, 5)


class RecognitionTask:
    arch = "xclip"

    def __init__(self, args):
        self.class_names = read_class_names(args.labels_csv)
        self.text_ids = tokenize_class_names(self.class_names)  # (K, 77)
        if args.config and unused_keys(args.xclip_config):
            logger.warning("%s sets %s, which this version does not use yet", args.config,
                           ", ".join(unused_keys(args.xclip_config)))
        configured = args.xclip_config["DATA.NUM_CLASSES"] if args.config else None
        if configured is not None and configured != len(self.class_names):
            logger.warning("DATA.NUM_CLASSES is %d but %s lists %d classes; the CSV decides", configured,
                           args.labels_csv, len(self.class_names))

    def build_model(self, args, device):
        """X-CLIP from --resume (sizes from its keys) or from CLIP's weights; --init_model weights.
        Returns (model on device, the --resume checkpoint or None)."""
        model, checkpoint = build_recognition_model(args)
        if args.precision == "fp16":
            model.half()
        return model.to(device), checkpoint

    def eval_loader(self, args):
        loader, _ = RECOGNITION_EVAL_LOADERS[args.datatype](
            list_path=args.val_list, root=args.features_path, labels_csv=args.labels_csv,
            lmdb_path=args.lmdb_dataset, num_frames=args.max_frames, num_clips=args.num_clips,
            num_crops=args.num_crops, input_size=args.image_resolution, batch_size=args.batch_size_val,
            num_workers=args.num_thread_reader)
        logger.info("%s: %d videos, %d classes, %d clip(s) x %d crop(s) per video", args.val_list,
                    len(loader.dataset), len(self.class_names), args.num_clips, args.num_crops)
        return loader, len(loader.dataset)

    @staticmethod
    def video_paths(dataset):
        return [video.path for video in dataset.videos[:50]]

    @staticmethod
    def tensorboard_metrics(metrics):
        return metrics

    @staticmethod
    def summary(metrics):
        return f"top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}"

    @staticmethod
    def score(metrics):
        """The number that decides ckpt.best: top-1 accuracy."""
        return metrics["top1"]

    @torch.no_grad()
    def evaluate(self, model, loader, device, args, epoch=None):
        """Score every video of the list (every view's softmax, averaged over the views), write
        metrics.json {"top1", "top5"} (percent), scores.npy [videos, classes] in list order, and a
        line of results.jsonl."""
        model.eval()
        summed, labels, broken = video_scores(model, loader, self.text_ids.to(device), device,
                                              autocast_context(args.precision, device))
        check_broken_share(broken, len(labels), args.allow_blank_videos)
        if not np.isfinite(summed).all():
            raise NonFiniteEvaluation("the class scores hold non-finite values (diverged weights?); nothing is written")
        metrics = top_k_accuracy(summed, labels)  # ranked on the sum over views, as the original
        scores = summed / (args.num_clips * args.num_crops)
        logger.info("top-1 %.2f top-5 %.2f on %d videos (broken videos: %d of %d)", metrics["top1"],
                    metrics["top5"], len(labels), broken, len(labels))
        np.save(os.path.join(args.output_dir, "scores.npy"), scores)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(os.path.join(args.output_dir, "results.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics, "broken_videos": broken}) + "\n")
        return metrics


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
