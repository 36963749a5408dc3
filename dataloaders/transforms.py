"""Frames (uint8 RGB) to the normalised tensor CLIP expects (SPEC §5, transform)."""
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from modules.clip import OPENAI_IMAGE_MEAN as CLIP_MEAN
from modules.clip import OPENAI_IMAGE_STD as CLIP_STD


def center_crop_offsets(height, width, size):
    """(top, left) of a centred ``size`` x ``size`` crop, as torchvision's CenterCrop computes
    them: ``int(round((H - size) / 2))`` (Python's round: halves go to the even integer)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def resize_shorter_side(frames, size):
    """Resize so the shorter side is ``size`` (bicubic, antialiased); a no-op when it already is.

    The original never resizes (its videos are pre-compressed to a 224 shorter side); this
    extension only touches other videos. Resizing the uint8 frames, rounding back to uint8,
    mirrors CLIP's own PIL preprocessing and a re-encoded video.

    Args:
        frames: uint8 tensor [T, 3, H, W].
    Returns:
        uint8 tensor [T, 3, H', W'] with min(H', W') == size.
    """
    if min(frames.shape[-2:]) == size:
        return frames
    return TF.resize(frames, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def resize_and_crop(frames, size):
    """uint8 numpy [T, H, W, 3] (RGB) -> uint8 tensor [T, 3, size, size]: the shorter side resized
    to ``size`` when needed, then the centred crop."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    x = resize_shorter_side(x, size)
    top, left = center_crop_offsets(x.shape[-2], x.shape[-1], size)
    return x[:, :, top:top + size, left:left + size]


def crop_frame(frame, size):
    """One decoded frame to its uint8 crop, the per-frame form of ``resize_and_crop`` that
    ``decode.decode_clip`` applies as frames are decoded (so no full-size frame is kept).

    The bicubic filter works on a float32 copy of its input (4 bytes per value, 400 MB for a
    7680x4320 frame); resizing one channel at a time keeps that copy to a third, and every
    channel is filtered alone anyway, so the result is the same to the bit.

    Args:
        frame: uint8 numpy array [H, W, 3] (RGB).
    Returns:
        uint8 tensor [3, size, size] that owns its memory (no view of the frame).
    """
    channels = [resize_and_crop(frame[None, :, :, c:c + 1], size)[0] for c in range(3)]  # 3 x (1, S, S)
    return torch.cat(channels)


def normalise_crops(crops, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 tensor [T, 3, S, S] -> float32 [T, 3, S, S]: scaled to [0, 1] and normalised with the
    RGB statistics the model was trained with (OpenAI CLIP's by default)."""
    # Every step is element-wise, so it commutes with the crop done before.
    x = crops.float().div_(255.0)
    mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


def frames_to_clip(frames, size=224, mean=CLIP_MEAN, std=CLIP_STD):
    """Resize (when needed), centre-crop, scale to [0, 1] and normalise with the model's statistics.

    Args:
        frames: uint8 numpy array [T, H, W, 3] (RGB).
        size: output side, 224 for the released models.
        mean, std: RGB statistics (OpenAI CLIP's by default).
    Returns:
        float32 tensor [T, 3, size, size].
    """
    return normalise_crops(resize_and_crop(frames, size), mean, std)
