"""Write the reference outputs of the original X-CLIP that tests/test_xclip_*.py compare against.

Documented, not run in CI (it needs the original code and its dependencies). Command:

    XCLIP_ORIGINAL=/work/orig/VideoX/X-CLIP XCLIP_REFENV=/work/refenv \\
        .venv/bin/python tests/reference/make_xclip_reference.py

XCLIP_ORIGINAL is a checkout of microsoft/VideoX's X-CLIP folder; XCLIP_REFENV (optional) a folder
put first on sys.path holding the original's dependencies (timm, yacs, einops, mmcv 1.7.2,
decord, opencv), which the project never installs. Everything runs in fp32 on the CPU and writes,
under tests/reference/xclip/:

- keys_tiny.json, keys_vit_b32.json: the original's state-dict keys and shapes (T = 8), for the
  tiny CLIP of tests/tiny_clip.py and for ViT-B/32 sizes (443 keys).
- model.npz, model.json: the original built through its own `models.xclip.load` from the tiny
  CLIP (written as an OpenAI TorchScript archive), loaded strictly with the seeded tiny X-CLIP
  weights of tests/tiny_xclip.py, on the cases of `REFERENCE_CASES` (seeded frames, T = 8 and 4,
  one and several class names): token ids, text features, frame features, video features, the
  prompt generator's output and the logits.
- eval.npz, eval.json: the original's validation pipeline (datasets/build.py + pipeline.py, mmcv,
  decord) on videos/*.mp4 with val_list.txt and labels.csv, for TEST.NUM_CLIP x NUM_CROP = 1x1,
  1x3, 2x3, feeding the same tiny model: per video the frame indices, per-frame sums and sums of
  squares of the input tensors, every view's softmax over the classes, and their sum and mean.
  Every video is evaluated once, in list order (batch 1), unlike the original's shuffled loader
  with drop_last.
- released_config_yacs.pth: {'config': the original's yacs config} pickled by yacs itself, as its
  checkpoints carry it (the test of the yacs stand-in of tests/tiny_xclip.py compares with it).
- versions.json: library versions.

Compatibility shims, none of which changes what is computed:
- numpy >= 1.24 has no `np.int`, which the original's SampleFrames uses as a dtype; it was an
  alias of the builtin int, restored as such.
- pandas is not installed; the original only calls `pandas.read_csv(labels).values.tolist()` (rows
  [id, name]); a stand-in module does that with the csv module.
- build_dataloader asks torch.distributed for rank and world size: a one-process gloo group.
- The original's model is used as built; its text cache (`use_cache`) is cleared before every
  label list of the model cases, since the original would otherwise reuse the first list's features.

One deliberate change (XCLIP_SPEC §3.3 FIX, recorded in eval.json): for NUM_CLIP = C > 1 the
original draws C random train-mode index sets; here SampleFrames is patched to the deterministic
rule index_{j,t} = floor(t*a + (2j+1)*a/(2C)), a = N/T in float64, then mod N, clip by clip.
"""
import csv
import importlib.machinery
import json
import logging
import os
import sys
import tempfile
import types
from functools import partial

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "xclip")
MULTIVIEW_RULE = "index_{j,t} = floor(t*a + (2j+1)*a/(2C)), a = N/T (float64), mod N; clips concatenated in order j"

sys.path.insert(0, ROOT)
from tests.tiny_clip import make_tiny_clip_state_dict, save_torchscript_archive  # noqa: E402
from tests.tiny_xclip import REFERENCE_CASES, REFERENCE_SEED, make_tiny_xclip_state_dict, reference_video  # noqa: E402

logger = logging.getLogger("xclip-reference")


def import_original():
    """Put the original (and its dependencies) on sys.path and import the modules used here."""
    original = os.environ.get("XCLIP_ORIGINAL")
    if not original or not os.path.isdir(os.path.join(original, "models")):
        sys.exit("set XCLIP_ORIGINAL to the original X-CLIP folder (the one holding models/xclip.py)")
    sys.path.insert(0, original)
    if os.environ.get("XCLIP_REFENV"):
        sys.path.insert(0, os.environ["XCLIP_REFENV"])
    np.int = int  # shim: removed alias of the builtin int, used by the original's SampleFrames
    import clip  # noqa: F401  (imported before models: the original's imports are circular)
    from models import xclip
    sys.modules["pandas"] = pandas_stand_in()
    from datasets import build, pipeline
    from utils import config, tools
    return types.SimpleNamespace(xclip=xclip, build=build, pipeline=pipeline, config=config, tools=tools)


def pandas_stand_in():
    """`read_csv(path).values.tolist()` for the two-column labels CSV (header id,name)."""
    def read_csv(path):
        with open(path, newline="") as f:
            rows = [[int(row[0]), row[1]] for row in list(csv.reader(f))[1:]]
        return types.SimpleNamespace(values=types.SimpleNamespace(tolist=lambda: rows))
    module = types.ModuleType("pandas")
    module.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
    module.read_csv = read_csv
    return module


def key_shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def write_json(name, value):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def build_original(orig, clip_archive, num_frames):
    """The original X-CLIP as its main.py builds it (`xclip.load`, jit=False, CPU), then the tiny
    X-CLIP weights of tests/tiny_xclip.py loaded strictly."""
    model, _ = orig.xclip.load(clip_archive, "ViT-B/32", device="cpu", jit=False, T=num_frames, droppath=0.0,
                               use_checkpoint=False, use_cache=True, logger=logger)
    model.load_state_dict(make_tiny_xclip_state_dict(seed=REFERENCE_SEED, num_frames=num_frames), strict=True)
    return model.float().eval()


@torch.no_grad()
def model_case(orig, model, frames_count, videos, seed, names):
    """Every intermediate output of the original on one reference case."""
    video = reference_video(seed, videos, frames_count)
    ids = orig.xclip.clip.tokenize(names, context_length=77)
    model.eval()
    model.cache_text_features = None
    frame_features, _ = model.visual(video.flatten(0, 1))
    video_features, patch_prompts = model.encode_video(video)
    text_features = model.encode_text(ids)
    prompts = model.prompts_generator(text_features.unsqueeze(0).expand(videos, -1, -1), patch_prompts.mean(dim=1))
    logits = model(video, ids)
    model.eval()  # the original's text cache leaves the model in training mode
    arrays = {"token_ids": ids, "text_features": text_features, "frame_features": frame_features,
              "video_features": video_features, "prompts": prompts, "logits": logits}
    meta = {"frames": frames_count, "videos": videos, "seed": seed, "class_names": names,
            "video_sum": float(video.double().sum()), "video_abs_sum": float(video.double().abs().sum())}
    return {k: v.numpy() for k, v in arrays.items()}, meta


def patch_multiview_sampling(pipeline):
    """XCLIP_SPEC §3.3 FIX: deterministic clips instead of the original's random train-mode draws."""
    original_sample_clips = pipeline.SampleFrames._sample_clips

    def sample_clips(self, num_frames):
        if self.test_mode or self.multiview == 1:
            return original_sample_clips(self, num_frames)
        a = np.float64(num_frames) / self.num_clips  # num_clips is T here (clip_len 1)
        t = np.arange(self.num_clips, dtype=np.float64)
        clips = [np.floor(t * a + ((2 * j + 1) * a) / (2 * self.multiview)) for j in range(self.multiview)]
        return np.concatenate(clips).astype(np.int64)
    pipeline.SampleFrames._sample_clips = sample_clips


class RecordFrameIndices:
    """Wraps the pipeline's SampleFrames step to keep each video's frame indices and frame count."""

    def __init__(self, step):
        self.step, self.records = step, []

    def __call__(self, results):
        results = self.step(results)
        self.records.append((int(results["total_frames"]), results["frame_inds"].tolist()))
        return results


def eval_config(orig, num_clips, num_crops):
    cfg = orig.config._C.clone()
    cfg.defrost()
    cfg.DATA.ROOT = OUT
    cfg.DATA.TRAIN_FILE = cfg.DATA.VAL_FILE = os.path.join(OUT, "val_list.txt")
    cfg.DATA.LABEL_LIST = os.path.join(OUT, "labels.csv")
    cfg.DATA.NUM_FRAMES, cfg.DATA.NUM_CLASSES, cfg.DATA.INPUT_SIZE = 8, 6, 224
    cfg.TEST.NUM_CLIP, cfg.TEST.NUM_CROP = num_clips, num_crops
    cfg.freeze()
    return cfg


def released_yacs_config(orig):
    """The config a released checkpoint carries: the original's defaults as its main.py leaves them
    (OUTPUT from --output, LOCAL_RANK added), 8 frames, 6 classes, frozen; the same content as
    tests/tiny_xclip.released_config(8, 6)."""
    cfg = orig.config._C.clone()
    cfg.defrost()
    cfg.DATA.NUM_FRAMES, cfg.DATA.NUM_CLASSES, cfg.OUTPUT, cfg.LOCAL_RANK = 8, 6, "exp", 0
    cfg.freeze()
    return cfg


@torch.no_grad()
def eval_views(orig, model, num_clips, num_crops):
    """The original's validation data path and per-view scoring on every video, in list order."""
    cfg = eval_config(orig, num_clips, num_crops)
    _, val_data, _, _ = orig.build.build_dataloader(logger, cfg)
    recorder = RecordFrameIndices(val_data.pipeline.transforms[1])
    val_data.pipeline.transforms[1] = recorder
    loader = torch.utils.data.DataLoader(val_data, batch_size=1, shuffle=False, num_workers=0,
                                         collate_fn=partial(orig.build.mmcv_collate, samples_per_gpu=1))
    text = orig.tools.generate_text(val_data)
    model.cache_text_features = None
    model.eval()
    softmaxes, frame_stats, labels = [], [], []
    for batch in loader:
        images = batch["imgs"]  # (1, views·T, 3, H, W)
        b, frames = images.shape[:2]
        views = images.view(b, frames // 8, 8, *images.shape[2:])  # (1, views, T, 3, H, W)
        softmaxes.append(torch.stack([model(views[:, v], text).softmax(dim=-1)[0] for v in range(views.shape[1])]))
        flat = images[0].double().flatten(1)  # (views·T, 3·H·W)
        frame_stats.append(torch.stack([flat.sum(1), flat.pow(2).sum(1)], dim=1))
        labels.append(int(batch["label"].reshape(-1)[0]))
    model.eval()
    softmax = torch.stack(softmaxes)  # (videos, views, K)
    arrays = {"softmax": softmax.numpy(), "scores_sum": softmax.sum(1).numpy(), "scores_mean": softmax.mean(1).numpy(),
              "frame_sum_sumsq": torch.stack(frame_stats).numpy(), "labels": np.array(labels)}
    meta = {"num_clips": num_clips, "num_crops": num_crops, "views": int(softmax.shape[1]),
            "view_order": "view v = crop v // num_clips, clip v % num_clips",
            "videos": [info["filename"].removeprefix(OUT + os.sep) for info in val_data.video_infos],
            "total_frames": [n for n, _ in recorder.records], "frame_indices": [i for _, i in recorder.records],
            "class_names": [name for _, name in val_data.classes],
            "multiview_sampling": MULTIVIEW_RULE if num_clips > 1 else "original test mode (one clip)"}
    return arrays, meta


def versions():
    import cv2
    import decord
    import mmcv
    import timm
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "cv2": cv2.__version__, "mmcv": mmcv.__version__, "decord": decord.__version__,
            "timm": timm.__version__, "dtype": "float32", "device": "cpu"}


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    orig = import_original()
    patch_multiview_sampling(orig.pipeline)
    os.makedirs(OUT, exist_ok=True)

    b32 = orig.xclip.XCLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12, T=8, mit_layers=1, prompts_layers=2)
    write_json("keys_vit_b32.json", key_shapes(b32))
    del b32

    model_arrays, model_meta, models = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "ViT-B-32.pt")
        save_torchscript_archive(make_tiny_clip_state_dict(seed=REFERENCE_SEED), archive)
        for frames_count in sorted({case[1] for case in REFERENCE_CASES}):
            models[frames_count] = build_original(orig, archive, frames_count)
    write_json("keys_tiny.json", key_shapes(models[8]))
    for name, frames_count, videos, seed, names in REFERENCE_CASES:
        arrays, meta = model_case(orig, models[frames_count], frames_count, videos, seed, names)
        model_arrays.update({f"{name}/{k}": v for k, v in arrays.items()})
        model_meta[name] = meta
    np.savez_compressed(os.path.join(OUT, "model.npz"), **model_arrays)
    write_json("model.json", {"weights": f"tests/tiny_xclip.make_tiny_xclip_state_dict(seed={REFERENCE_SEED}, "
                                         "num_frames=T)", "cases": model_meta})

    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    eval_arrays, eval_meta = {}, {}
    for num_clips, num_crops in ((1, 1), (1, 3), (2, 3)):
        arrays, meta = eval_views(orig, models[8], num_clips, num_crops)
        eval_arrays.update({f"{num_clips}x{num_crops}/{k}": v for k, v in arrays.items()})
        eval_meta[f"{num_clips}x{num_crops}"] = meta
    np.savez_compressed(os.path.join(OUT, "eval.npz"), **eval_arrays)
    write_json("eval.json", {"weights": f"make_tiny_xclip_state_dict(seed={REFERENCE_SEED}, num_frames=8)",
                             "frames": 8, "input_size": 224, "configs": eval_meta})

    torch.save({"config": released_yacs_config(orig)}, os.path.join(OUT, "released_config_yacs.pth"))
    write_json("versions.json", versions())
    dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)  # the original logs every key it initialises at INFO
    main()
