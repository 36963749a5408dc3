"""`--datatype demo`: a dataset that needs no download.

Short real H.264 videos of procedurally drawn scenes (a coloured shape moving over a background)
with captions that describe them, e.g. "a red circle moves left on a striped background". Every
video has its own combination of colour, shape, motion and background; the test split holds
combinations never seen in training, so retrieving them needs each attribute learned on its own.
Generated once under `<--data_dir>/demo` (a few seconds), into a temporary folder renamed when
complete, so an interrupted generation is redone rather than half used.
"""
import itertools
import json
import os
import shutil
import tempfile

import av
import numpy as np
import torch.distributed as dist

from .base import Pair, RetrievalDataset
from .loaders import make_reader

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
           "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245), "cyan": (40, 210, 220)}
SHAPES = ("circle", "square", "triangle", "diamond")
MOTIONS = {"moves left": (-1, 0), "moves right": (1, 0), "moves up": (0, -1), "moves down": (0, 1),
           "stays still": (0, 0)}
BACKGROUNDS = ("dark", "light", "striped", "checkered")
SIZE, FRAMES, FPS = 224, 12, 3
NUM_VIDEOS, NUM_TEST = 480, 80


def caption(colour, shape, motion, background):
    return f"a {colour} {shape} {motion} on a {background} background"


def background_image(kind, rng):
    """uint8 [SIZE, SIZE, 3] background with a random tint."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    tint = rng.integers(-20, 21, size=3)
    if kind == "dark":
        base = np.full((SIZE, SIZE, 3), 35)
    elif kind == "light":
        base = np.full((SIZE, SIZE, 3), 200)
    elif kind == "striped":
        base = np.where(((xx + yy) // 16 % 2 == 0)[..., None], 170, 70) * np.ones(3)
    else:
        base = np.where(((xx // 28 + yy // 28) % 2 == 0)[..., None], 150, 90) * np.ones(3)
    return np.clip(base + tint, 0, 255).astype(np.uint8)


def shape_mask(shape, cx, cy, radius):
    """bool [SIZE, SIZE]: the shape centred at (cx, cy)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= radius ** 2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius * 1.3
    return (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)  # triangle, apex up


def scene_frames(colour, shape, motion, background, rng):
    """uint8 [FRAMES, SIZE, SIZE, 3]: the shape moving over the background."""
    radius = int(rng.integers(22, 34))
    step = rng.uniform(8, 11)
    dx, dy = MOTIONS[motion]
    span = step * (FRAMES - 1)
    low, high = radius + 4 + span * (np.array([dx, dy]) < 0), SIZE - radius - 4 - span * (np.array([dx, dy]) > 0)
    start = rng.uniform(low, high)
    image = background_image(background, rng)
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for t in range(FRAMES):
        frames[t] = image
        mask = shape_mask(shape, start[0] + dx * step * t, start[1] + dy * step * t, radius)
        frames[t][mask] = COLOURS[colour]
    return frames


def write_h264(path, frames):
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.codec_context.gop_size = 6
        stream.codec_context.options = {"preset": "veryfast"}
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def generate(root, seed=0):
    """Write `root/videos/demoNNNN.mp4` and `root/annotations.json` ({"train"|"test": [{video, caption}]})."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS))
    chosen = [combos[i] for i in rng.permutation(len(combos))[:NUM_VIDEOS]]
    os.makedirs(os.path.join(root, "videos"))
    items = []
    for i, combo in enumerate(chosen):
        name = f"demo{i:04d}.mp4"
        write_h264(os.path.join(root, "videos", name), scene_frames(*combo, rng))
        items.append({"video": name, "caption": caption(*combo)})
    annotations = {"train": items[NUM_TEST:], "test": items[:NUM_TEST]}
    with open(os.path.join(root, "annotations.json"), "w") as f:
        json.dump(annotations, f, indent=1)


def ensure_generated(data_dir):
    """The demo folder, generated on first use (by rank 0 under DDP; the others wait)."""
    root = os.path.join(data_dir, "demo")
    distributed = dist.is_available() and dist.is_initialized()
    if not os.path.exists(os.path.join(root, "annotations.json")) and (not distributed or dist.get_rank() == 0):
        os.makedirs(data_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".demo-", dir=data_dir)
        generate(tmp)
        if os.path.exists(root):  # an interrupted earlier generation
            shutil.rmtree(root)
        os.replace(tmp, root)
    if distributed:
        dist.barrier()
    return root


def load_pairs(data_dir, split):
    root = ensure_generated(data_dir)
    with open(os.path.join(root, "annotations.json")) as f:
        items = json.load(f)[split]
    return [Pair(os.path.join(root, "videos", item["video"]), (item["caption"],)) for item in items]


def build_dataset(args, tokenizer, split):
    pairs = load_pairs(args.data_dir, split)
    return RetrievalDataset(pairs, tokenizer, make_reader(args, split == "train"), args.max_words)
