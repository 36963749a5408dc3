"""X-CLIP's training augmentation (XCLIP_SPEC §3.4), step by step and with the original's RNGs.

Per video, in this order (S = input size, R = ``int(256 / 224 * S)``):
1. short side resized to R (OpenCV bilinear, ``resize.resize_linear``);
2. multi-scale crop: one box for all frames, two Python ``random.choice`` draws;
3. the box resized to S x S (OpenCV bilinear);
4. horizontal flip of all frames when ``np.random.rand() < 0.5``;
5. when ``random.random() < p_jitter``: torchvision ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` on PIL
   images, called once per frame (each frame draws its own factors and order from torch's RNG);
6. when ``random.random() < p_gray``: torchvision ``Grayscale(3)`` on every frame;
7. ImageNet normalisation (``recognition_transforms.normalise_views``).

Draw order. The three generators are independent, so only the order within each one matters:
numpy draws the frame indices (``sampling.xclip_train_indices``) and then the flip; Python's
``random`` draws the crop size, the crop offset, the jitter decision, then the grayscale decision
(both decisions are drawn whatever the probabilities, as in the original); torch draws the
jitter parameters frame by frame. Steps 1-3 run on each frame as it is decoded: the crop box is
drawn when the first sampled frame arrives (its size decides the candidates), i.e. after the
numpy index draw and before every other Python draw, so the sequence of every generator is the
original's and a clip holds T frames of S x S only.
"""
import random

import numpy as np
import torchvision
from PIL import Image

from .recognition_transforms import normalise_views, resize_scale, short_side_size
from .resize import resize_linear

CROP_SCALES = (1, 0.875, 0.75, 0.66)
MAX_SCALE_GAP = 1  # |i - j| of the width and height scale levels
SNAP = 3  # a crop side closer than this to S becomes S
FLIP_CHANCE = 0.5
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}


def crop_candidates(height, width):
    """The (width, height) crop sizes of a frame: every pair of the scaled short sides whose
    scale levels differ by at most one, height level outer, width level inner (10 pairs)."""
    sides = [int(min(height, width) * scale) for scale in CROP_SCALES]
    return [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides)
            if abs(i - j) <= MAX_SCALE_GAP]


def multi_scale_crop_box(height, width, size, rng=random):
    """Draw the multi-scale crop of a ``height`` x ``width`` frame (already resized to R).

    Two draws from ``rng`` (Python's ``random`` module by default): the (w, h) pair of
    ``crop_candidates``, whose sides within ``SNAP`` pixels of S become S, then one of five fixed
    offsets with ``ws = (width - w) // 4``, ``hs = (height - h) // 4``: (0, 0), (4ws, 0),
    (0, 4hs), (4ws, 4hs), (2ws, 2hs).

    Returns:
        (left, top, crop_width, crop_height), ints.
    """
    pair = rng.choice(crop_candidates(height, width))
    crop_w, crop_h = (size if abs(side - size) < SNAP else side for side in pair)
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    left, top = rng.choice([(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)])
    return left, top, crop_w, crop_h


class MultiScaleCropper:
    """Steps 1-3 for the frames of one video, applied to each frame as it is decoded.

    The box is drawn (``multi_scale_crop_box``) when the first frame arrives and kept in
    ``box`` for all later frames. Use a new object for every video.

    Args:
        size: S.
        rng: source of the crop draws (Python's ``random`` module by default).
    """

    def __init__(self, size, rng=random):
        self.size = size
        self.rng = rng
        self.box = None

    def __call__(self, frame):
        """uint8 [H, W, 3] -> uint8 [S, S, 3] (short side to R, crop, resize to S x S)."""
        width, height = short_side_size(frame.shape[0], frame.shape[1], resize_scale(self.size))
        resized = resize_linear(frame, width, height)  # (R-short, ., 3)
        if self.box is None:
            self.box = multi_scale_crop_box(height, width, self.size, self.rng)
        left, top, crop_w, crop_h = self.box
        return resize_linear(resized[top:top + crop_h, left:left + crop_w], self.size, self.size)


def _through_pil(frames, transform):
    """Apply a torchvision transform to each uint8 [S, S, 3] frame as a PIL image."""
    return [np.asarray(transform(Image.fromarray(frame))) for frame in frames]


def augment_clip(frames, p_jitter, p_gray):
    """Steps 4-7 on the cropped frames of one video.

    Args:
        frames: list of T uint8 [S, S, 3] arrays (a repeated frame may be the same object; none
            is modified).
        p_jitter: chance of colour jitter (``--color_jitter``).
        p_gray: chance of grayscale (``--gray_scale``).
    Returns:
        float32 tensor [T, 3, S, S].
    """
    if np.random.rand() < FLIP_CHANCE:
        frames = [np.ascontiguousarray(frame[:, ::-1]) for frame in frames]
    if random.random() < p_jitter:
        frames = _through_pil(frames, torchvision.transforms.ColorJitter(**JITTER))
    if random.random() < p_gray:
        frames = _through_pil(frames, torchvision.transforms.Grayscale(num_output_channels=3))
    return normalise_views(np.stack(frames))  # (T, 3, S, S)
