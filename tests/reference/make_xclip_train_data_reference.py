"""Reference outputs of the original X-CLIP *training* data pipeline (run by hand, not in CI).

Runs the training pipeline of the original's ``datasets/build.py`` (decord decoding,
``SampleFrames`` train mode, mmcv/OpenCV ``Resize``, ``MultiScaleCrop``, ``Resize`` to S x S,
``Flip``, ``ColorJitter``, ``GrayScale``, ``Normalize``, ``FormatShape``) on the committed tiny
videos of ``tests/reference/xclip`` with S = 224, T = 8, for five (AUG.COLOR_JITTER,
AUG.GRAY_SCALE) settings: plain (0, 0), jitter (1, 0), gray (0, 1), both (1, 1) and the default
(0.8, 0.2). Each video is run with several seeds; before every video the three generators are
seeded with the same value: ``random.seed(s); np.random.seed(s); torch.manual_seed(s)`` with
``s = seed_of(video index, repeat)`` (the same seeds in every setting, so the settings share
frame indices, crops and flips, and only the jitter/grayscale steps differ).

Writes:
- ``xclip/train_data_reference.json``: library versions, the seeding rule, and per setting a
  list of entries: video, seed, ``total_frames``, the frame indices ``SampleFrames`` chose, the
  frame size after the first resize, the crop box ``[x1, y1, x2, y2]`` of ``MultiScaleCrop``, the
  flip decision, the jitter and grayscale decisions (observed by reading the next
  ``random.random()`` and restoring the state before the step draws it), and the SHA-256
  (C order, little-endian) and float64 sum of the float32 [T, 3, S, S] output.
- ``xclip/train_data_reference.npz``: per entry the output's values at flat positions
  ``0, STRIDE, 2 * STRIDE, ...`` (to show where a mismatch is).

Shims to run the original on today's libraries (none touches the numbers): those of
``make_xclip_data_reference.py`` (``np.int = int``, a stand-in ``pandas``, rank 0 of 1).
The torchvision and PIL used are this environment's (refenv has neither), the same ones the
project's tests use.

Usage (from the repository root):
    XCLIP_ORIGINAL=/work/orig/VideoX/X-CLIP PYTHONPATH=/work/refenv \\
        /work/main/.venv/bin/python tests/reference/make_xclip_train_data_reference.py
"""
import json
import logging
import os
import random
import sys

import numpy as np
import PIL
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_xclip_data_reference import HERE, import_original, sha256, tiny_videos_config, versions  # noqa: E402

SIZE, FRAMES = 224, 8
SETTINGS = {"plain": (0.0, 0.0), "jitter": (1.0, 0.0), "gray": (0.0, 1.0), "both": (1.0, 1.0),
            "default": (0.8, 0.2)}  # name -> (AUG.COLOR_JITTER, AUG.GRAY_SCALE)
REPEATS = 3
STRIDE = 7919


def seed_of(video_index, repeat):
    """The seed of one run of one video (the same in every setting)."""
    return 100 * video_index + repeat


def seed_everything(seed):
    """What the reference does before each video: the three generators get the same seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Observe:
    """Wraps a pipeline step; ``before(results)`` / ``after(results)`` add to ``record``."""

    def __init__(self, step, record, before=None, after=None):
        self.step, self.record, self.before, self.after = step, record, before, after

    def __call__(self, results):
        if self.before:
            self.record.update(self.before(results))
        results = self.step(results)
        if self.after:
            self.record.update(self.after(results))
        return results


def peek_decision(name, chance):
    """Reads the ``random.random()`` the step is about to draw, and puts the state back."""
    def before(results):
        state = random.getstate()
        value = random.random()
        random.setstate(state)
        return {name: bool(value < chance)}
    return before


def instrument(pipeline, record, jitter, gray):
    """Wrap the train pipeline's steps (in the order of build.py) so each run fills ``record``."""
    steps = pipeline.transforms
    names = [type(step).__name__ for step in steps]
    assert names[:10] == ["DecordInit", "SampleFrames", "DecordDecode", "Resize", "MultiScaleCrop",
                          "Resize", "Flip", "ColorJitter", "GrayScale", "Normalize"], names
    steps[1] = Observe(steps[1], record, after=lambda r: {"total_frames": int(r["total_frames"]),
                                                         "indices": r["frame_inds"].tolist()})
    steps[3] = Observe(steps[3], record, after=lambda r: {"resized_hw": list(r["img_shape"])})
    steps[4] = Observe(steps[4], record, after=lambda r: {"crop_box": r["crop_bbox"].tolist()})
    steps[6] = Observe(steps[6], record, after=lambda r: {"flip": bool(r["flip"])})
    steps[7] = Observe(steps[7], record, before=peek_decision("jitter", jitter))
    steps[8] = Observe(steps[8], record, before=peek_decision("gray", gray))


def run_setting(build, defaults, jitter, gray):
    """Entries (record, output float32 [T, 3, S, S]) for every video and repeat."""
    config = tiny_videos_config(defaults, FRAMES, SIZE)
    config.AUG.COLOR_JITTER, config.AUG.GRAY_SCALE = jitter, gray
    config.freeze()
    train_data, _, _, _ = build.build_dataloader(logging.getLogger("reference"), config)
    record = {}
    instrument(train_data.pipeline, record, jitter, gray)
    entries = []
    for k, info in enumerate(train_data.video_infos):
        for repeat in range(REPEATS):
            record.clear()
            seed = seed_of(k, repeat)
            seed_everything(seed)
            imgs = train_data[k]["imgs"].numpy()  # (T, 3, S, S)
            assert imgs.shape == (FRAMES, 3, SIZE, SIZE) and imgs.dtype == np.float32
            entry = {"video": os.path.relpath(info["filename"], HERE), "seed": seed, **record,
                     "sha256": sha256(imgs), "sum": float(imgs.astype(np.float64).sum())}
            entries.append((entry, imgs))
    return entries


def main():
    build, defaults = import_original()
    library = {**versions(), "torchvision": torchvision.__version__, "PIL": PIL.__version__}
    reference = {"size": SIZE, "frames": FRAMES, "stride": STRIDE, "versions": library,
                 "seeding": "random.seed(s); np.random.seed(s); torch.manual_seed(s) before each "
                            "video, s = 100 * video index + repeat",
                 "settings": {}}
    samples = {}
    for name, (jitter, gray) in SETTINGS.items():
        entries = run_setting(build, defaults, jitter, gray)
        reference["settings"][name] = {"color_jitter": jitter, "gray_scale": gray,
                                       "entries": [entry for entry, _ in entries]}
        for i, (_, imgs) in enumerate(entries):
            samples[f"{name}/{i}"] = imgs.reshape(-1)[::STRIDE]
    with open(os.path.join(HERE, "train_data_reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    np.savez_compressed(os.path.join(HERE, "train_data_reference.npz"), **samples)
    print(json.dumps(library), sum(len(s["entries"]) for s in reference["settings"].values()), "entries")


if __name__ == "__main__":
    main()
