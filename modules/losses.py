"""Symmetric InfoNCE (CLIP4Clip's CrossEn) on a text-video logit matrix."""
import torch.nn.functional as F


def cross_entropy_diagonal(logits):
    """logits [n, n] with positives on the diagonal -> mean over rows of -log softmax(row)[i]."""
    return -F.log_softmax(logits, dim=-1).diagonal().mean()


def symmetric_infonce(logits):
    """Average of the text->video and video->text losses."""
    return (cross_entropy_diagonal(logits) + cross_entropy_diagonal(logits.T)) / 2
