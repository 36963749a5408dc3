"""Tiny datasets in the real MSR-VTT and MSVD file formats, with real H.264 videos."""
import csv
import json
import os
import pickle

import torch

from modules.checkpoint import save_checkpoint
from tests.tiny_clip import make_tiny_clip_state_dict, save_torchscript_archive
from tests.video_factory import write_video

# Token clustering in the tiny 12-block CLIP with --max_frames 4: blocks 7-12 see 2 segments of 12 tokens.
SCHEDULE = ["--cluster_inter", "1", "--cluster_num_blocks"] + ["49"] * 6 + ["12"] * 6 + \
           ["--target_frames_blocks"] + ["4"] * 6 + ["2"] * 6
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def caption_of(i):
    return f"a {COLOURS[i % len(COLOURS)]} square moves across a pattern number {i}"


def write_msrvtt(root, num_train=8, num_test=6, frames=8, broken=()):
    """MSRVTT_data.json, a training csv, the JSFusion test csv and videos video<i>.mp4.
    Indices in `broken` get an empty file instead of a video. Returns the flag list."""
    videos = os.path.join(root, "videos")
    os.makedirs(videos, exist_ok=True)
    n = num_train + num_test
    for i in range(n):
        path = os.path.join(videos, f"video{i}.mp4")
        if i in broken:
            open(path, "wb").close()
        else:
            write_video(path, num_frames=frames + i % 3, width=256, height=224, seed=i)
    sentences = [{"video_id": f"video{i}", "caption": caption_of(i)} for i in range(n)]
    sentences += [{"video_id": f"video{i}", "caption": f"pattern {i} with a moving square"} for i in range(n)]
    with open(os.path.join(root, "MSRVTT_data.json"), "w") as f:
        json.dump({"videos": [{"video_id": f"video{i}"} for i in range(n)], "sentences": sentences}, f)
    with open(os.path.join(root, "train.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id"])
        writer.writerows([[f"video{i}"] for i in range(num_train)])
    with open(os.path.join(root, "test.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i in range(num_train, n):
            writer.writerow([f"ret{i}", f"msr{i}", f"video{i}", caption_of(i)])
    return ["--datatype", "msrvtt", "--data_path", os.path.join(root, "MSRVTT_data.json"),
            "--train_csv", os.path.join(root, "train.csv"), "--val_csv", os.path.join(root, "test.csv"),
            "--features_path", videos]


def write_msvd(root, captions_per_video=(2, 1, 3, 2), frames=6):
    """{train,val,test}_list.txt, raw-captions.pkl and videos; the same videos in every split."""
    videos = os.path.join(root, "videos")
    os.makedirs(videos, exist_ok=True)
    ids = [f"clip{i}" for i in range(len(captions_per_video))]
    captions = {}
    for i, (vid, count) in enumerate(zip(ids, captions_per_video)):
        write_video(os.path.join(videos, f"{vid}.avi"), num_frames=frames, width=224, height=256, seed=10 + i)
        captions[vid] = [caption_of(i + 3 * j).split() for j in range(count)]
    for split in ("train", "val", "test"):
        with open(os.path.join(root, f"{split}_list.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    with open(os.path.join(root, "raw-captions.pkl"), "wb") as f:
        pickle.dump(captions, f)
    return ["--datatype", "msvd", "--data_path", root, "--features_path", videos]


def write_tiny_clip(pretrained_dir, seed=0):
    """ViT-B-32.pt as OpenAI ships it (TorchScript, fp16), sized 64 wide, one head, 12 blocks."""
    os.makedirs(pretrained_dir, exist_ok=True)
    state_dict = make_tiny_clip_state_dict(seed=seed, dtype=torch.float16)
    save_torchscript_archive(state_dict, os.path.join(pretrained_dir, "ViT-B-32.pt"))
    return state_dict


def save_released_checkpoint(model, path):
    """The original's checkpoint dict, as saved under DDP (`module.` prefix, position_ids buffer)."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    state["module.clip.visual.position_ids"] = torch.arange(50)[None]
    save_checkpoint({"epoch": 5, "global_step": 120, "arch": "eclip", "state_dict": state, "best_acc1": 44.1,
                     "optimizer": {}}, path)
