"""X-CLIP's evaluation transforms (XCLIP_SPEC §3.5): short-side resize, 1 or 3 crops, normalise.

Frames are uint8 RGB [H, W, 3] as decoded. ``eval_crops`` is applied to each frame as it is
decoded (``decode.decode_clip``'s ``convert``), so a clip holds only its crops;
``normalise_views`` then makes the float32 model input.
"""
import numpy as np
import torch

from .resize import resize_linear

# ImageNet statistics on 0..255 RGB (X-CLIP does not use CLIP's).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CROP_COUNTS = (1, 3)


def resize_scale(input_size):
    """R, the short side before a centre crop: ``int(256 / 224 * S)`` (256 for 224, 384 for 336)."""
    return int(256 / 224 * input_size)


def short_side_size(height, width, short):
    """(width, height) after resizing the short side to ``short`` as mmcv does:
    ``f = short / min(h, w)``, size ``(int(w * f + 0.5), int(h * f + 0.5))``."""
    f = short / min(height, width)
    return int(width * f + 0.5), int(height * f + 0.5)


def crop_offsets(height, width, size, num_crops):
    """(top, left) of the crops of a frame already resized for ``num_crops``.

    One crop: centred, ``((h - S) // 2, (w - S) // 2)``. Three crops: along the long side at
    0, 2 * st, st (this order; st = (long - S) // 2); along the width when the height is S
    (square frames included), else along the height.
    """
    if num_crops == 1:
        return [((height - size) // 2, (width - size) // 2)]
    if height == size:
        step = (width - size) // 2
        return [(0, 0), (0, 2 * step), (0, step)]
    step = (height - size) // 2
    return [(0, 0), (2 * step, 0), (step, 0)]


def check_crop_count(num_crops):
    """X-CLIP evaluates 1 or 3 crops; the original silently treats other counts as 1 (FIX: refuse)."""
    if num_crops not in CROP_COUNTS:
        raise ValueError(f"--num_crops {num_crops} is not supported; use 1 (centre crop) or 3")


def eval_crops(frame, size, num_crops):
    """The evaluation crops of one frame.

    One crop: short side resized to R = ``resize_scale(size)``, centre crop. Three crops: short
    side resized to S itself, three crops along the long side. Resizing is OpenCV's bilinear
    (``resize.resize_linear``), as mmcv does.

    Args:
        frame: uint8 [H, W, 3] RGB.
        size: S, the crop side.
        num_crops: 1 or 3.
    Returns:
        uint8 array [num_crops, S, S, 3] (owns its memory).
    """
    check_crop_count(num_crops)
    short = resize_scale(size) if num_crops == 1 else size
    width, height = short_side_size(frame.shape[0], frame.shape[1], short)
    resized = resize_linear(frame, width, height)  # (h', w', 3)
    offsets = crop_offsets(height, width, size, num_crops)
    return np.stack([resized[top:top + size, left:left + size] for top, left in offsets])


def normalise_views(crops):
    """uint8 [..., S, S, 3] -> float32 tensor [..., 3, S, S]: ``(x - mean) * (1 / std)``.

    mmcv computes ``1 / std`` in float64, then OpenCV subtracts and multiplies in float32;
    dividing by std instead changes the last bit of about a quarter of the values.
    """
    x = torch.from_numpy(np.ascontiguousarray(crops)).float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    inverse_std = torch.tensor(1.0 / np.float32(IMAGENET_STD).astype(np.float64), dtype=torch.float32)
    x = x.sub_(mean).mul_(inverse_std)
    return x.movedim(-1, -3).contiguous()
