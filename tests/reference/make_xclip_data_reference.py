"""Data-level reference outputs of the original X-CLIP evaluation pipeline (run by hand, not in CI).

Runs the original's validation data pipeline (``datasets/build.py``: decord decoding, mmcv's
OpenCV resize, crops, normalisation) on the committed tiny videos of ``tests/reference/xclip``
with S = 224, T = 8 for 1 clip x 1 crop, 1 clip x 3 crops and 2 clips x 3 crops, and writes:

- ``xclip/data_reference.json``: library versions; per video decord's frame count and the
  SHA-256 of all its frames (read out of order) for the PyAV comparison; per setting and video
  the frame indices the pipeline used and, per view, the SHA-256 of the float32 [T, 3, S, S]
  tensor (C order, little-endian) and its float64 sum; the SHA-256 of ``cv2.resize(INTER_LINEAR)``
  on seeded random uint8 images of many sizes (the ``resize_cases``).
- ``xclip/data_reference.npz``: per setting and video, float32 [V, K] values of every view at
  the flat positions ``0, STRIDE, 2 * STRIDE, ...`` (to show where a mismatch is).

Changes needed to run the original on today's libraries (none touches the numbers):
- ``np.int = int``: numpy >= 1.24 dropped the alias the original uses.
- a stub ``pandas`` module: ``datasets/build.py`` imports pandas only to read class names,
  which the data pipeline never does.
- ``torch.distributed.get_world_size/get_rank`` return 1/0: ``build_dataloader`` asks for them
  without needing a process group.
- 2 clips: the original draws random training clips; the validation ``SampleFrames`` gets
  XCLIP_SPEC §3.3's FIX rule instead (written out below), the one this project implements.

Usage (from the repository root):
    XCLIP_ORIGINAL=/work/orig/VideoX/X-CLIP PYTHONPATH=/work/refenv \\
        /work/main/.venv/bin/python tests/reference/make_xclip_data_reference.py
"""
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import logging
import math
import os
import platform
import sys
import types

import numpy as np
import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xclip")
SIZE, FRAMES = 224, 8
SETTINGS = {"1x1": (1, 1), "1x3": (1, 3), "2x3": (2, 3)}  # name -> (clips, crops)
STRIDE = 7919  # sample positions of the stored values
# (source width, height) of the committed videos; each is resized to a short side of 256 and 224.
VIDEO_SIZES = [(340, 256), (256, 340), (320, 240), (400, 224)]


def import_original():
    """``datasets.build`` and the default config of the original, patched as the docstring says."""
    root = os.environ.get("XCLIP_ORIGINAL")
    if not root or not os.path.isdir(os.path.join(root, "datasets")):
        sys.exit("set XCLIP_ORIGINAL to the original X-CLIP folder (it holds datasets/build.py)")
    sys.path.insert(0, root)
    np.int = int
    if importlib.util.find_spec("pandas") is None:
        stub = types.ModuleType("pandas")
        stub.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
        sys.modules["pandas"] = stub
    torch.distributed.get_world_size = lambda *args, **kwargs: 1
    torch.distributed.get_rank = lambda *args, **kwargs: 0
    from datasets import build
    from utils.config import _C
    return build, _C


def fix_offsets(num_frames, num_clips):
    """XCLIP_SPEC §3.3 FIX: clip j, frame t -> floor(t * a + (2j + 1) * a / (2C)), a = N / T."""
    a = num_frames / float(FRAMES)
    return np.array([math.floor(t * a + (2 * j + 1) * a / (2 * num_clips))
                     for j in range(num_clips) for t in range(FRAMES)], dtype=np.int64)


class RecordIndices:
    """Wraps the pipeline's SampleFrames step and keeps what it chose."""

    def __init__(self, step):
        self.step = step
        self.records = []

    def __call__(self, results):
        results = self.step(results)
        self.records.append((int(results["total_frames"]), results["frame_inds"].tolist()))
        return results


def sha256(array):
    """SHA-256 of the array's values in C order, little-endian."""
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.sha256(data.tobytes()).hexdigest()


def tiny_videos_config(defaults, frames, size):
    """The original's config (unfrozen copy of `defaults`) reading the committed tiny videos, with
    val_list.txt as both lists, T = frames and S = size."""
    config = defaults.clone()
    config.defrost()
    config.DATA.ROOT = HERE
    config.DATA.TRAIN_FILE = config.DATA.VAL_FILE = os.path.join(HERE, "val_list.txt")
    config.DATA.LABEL_LIST = os.path.join(HERE, "labels.csv")
    config.DATA.NUM_CLASSES, config.DATA.NUM_FRAMES, config.DATA.INPUT_SIZE = 6, frames, size
    return config


def run_setting(build, defaults, num_clips, num_crops):
    """Per video: (frame count, indices, views float32 [V, T, 3, S, S]) from the original."""
    config = tiny_videos_config(defaults, FRAMES, SIZE)
    config.TEST.NUM_CLIP, config.TEST.NUM_CROP = num_clips, num_crops
    config.freeze()
    _, val_data, _, _ = build.build_dataloader(logging.getLogger("reference"), config)
    steps = val_data.pipeline.transforms
    if num_clips > 1:
        steps[1]._sample_clips = lambda total: fix_offsets(total, num_clips)
    recorder = steps[1] = RecordIndices(steps[1])
    out = []
    for k in range(len(val_data)):  # every video, in list order
        imgs = val_data[k]["imgs"].numpy()  # (V*T, 3, S, S)
        total, indices = recorder.records[-1]
        out.append((val_data.video_infos[k]["filename"], total, indices,
                    imgs.reshape(-1, FRAMES, 3, SIZE, SIZE)))
    return out


def decord_frames(path):
    """decord's frame count and the SHA-256 of all its frames, read in a shuffled order."""
    import decord
    with open(path, "rb") as f:
        reader = decord.VideoReader(io.BytesIO(f.read()), num_threads=1)
    order = np.random.RandomState(0).permutation(len(reader))
    frames = {int(i): reader[int(i)].asnumpy() for i in order}
    stack = np.stack([frames[i] for i in range(len(reader))])
    return {"frames": len(reader), "shape": list(stack.shape[1:]), "sha256": sha256(stack)}


def resize_cases():
    """[width, height, out width, out height, seed, sha256 of cv2.resize] on RandomState images."""
    import cv2
    rng = np.random.RandomState(2024)
    sizes = []
    for w, h in VIDEO_SIZES:
        for short in (256, 224, 384, 336):
            f = short / min(w, h)
            sizes.append((w, h, int(w * f + 0.5), int(h * f + 0.5)))
    sizes += [(1920, 1080, 455, 256), (640, 480, 320, 240), (1, 1, 7, 5), (5, 3, 1, 1), (3, 700, 2, 9)]
    for _ in range(300):
        w, h = rng.randint(1, 400, size=2)
        kind = rng.randint(3)
        if kind == 0:
            ow, oh = rng.randint(1, 600, size=2)
        elif kind == 1:
            ow, oh = max(1, w // rng.randint(1, 9)), max(1, h // rng.randint(1, 9))
        else:
            ow, oh = w * rng.randint(1, 5), h * rng.randint(1, 5)
        sizes.append((int(w), int(h), int(ow), int(oh)))
    cases = []
    for seed, (w, h, ow, oh) in enumerate(sizes):
        image = np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)
        out = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_LINEAR)
        cases.append([w, h, ow, oh, seed, sha256(out)])
    return cases


def versions():
    import cv2
    import decord
    import mmcv
    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "cv2": cv2.__version__, "mmcv": mmcv.__version__, "decord": decord.__version__}


def main():
    build, defaults = import_original()
    reference = {"size": SIZE, "frames": FRAMES, "stride": STRIDE, "versions": versions(),
                 "decord": {}, "settings": {}}
    samples = {}
    for name, (num_clips, num_crops) in SETTINGS.items():
        reference["settings"][name] = {"clips": num_clips, "crops": num_crops, "videos": {}}
        for path, total, indices, views in run_setting(build, defaults, num_clips, num_crops):
            video = os.path.relpath(path, HERE)
            reference["settings"][name]["videos"][video] = {
                "total_frames": total, "indices": indices,
                "views": [{"sha256": sha256(v), "sum": float(v.astype(np.float64).sum())} for v in views]}
            samples[f"{name}/{video}"] = views.reshape(len(views), -1)[:, ::STRIDE]
            if video not in reference["decord"]:
                reference["decord"][video] = decord_frames(path)
    reference["resize_cases"] = resize_cases()
    with open(os.path.join(HERE, "data_reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    np.savez_compressed(os.path.join(HERE, "data_reference.npz"), **samples)
    print(json.dumps(reference["versions"]), f"{len(reference['resize_cases'])} resize cases")


if __name__ == "__main__":
    main()
