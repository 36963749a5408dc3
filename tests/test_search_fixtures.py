"""Shared helpers of the search app's tests (no tests here): a tiny retrieval checkpoint that
describes itself (hparams) and folders of tiny real H.264 videos."""
import os

import params
from modules.checkpoint import save_checkpoint
from modules.factory import create_model
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.video_factory import write_corrupt_file, write_video

FPS = 3
# name -> (frames at 3 fps, seed): 4 s, 9 s, 15 s and 6 s (in a subfolder).
VIDEOS = {"a.mp4": (12, 1), "b.mp4": (27, 2), "c.mkv": (45, 3), "sub/d.mp4": (18, 4)}
WINDOW, STRIDE = 4.0, 2.0


def make_checkpoint(path, seed=1):
    """A tiny CLIP (width 64, 2+2 blocks) retrieval model with 4 frames, saved with its hparams."""
    folder = os.path.dirname(path)
    args = params.get_args(["--output_dir", folder, "--max_frames", "4", "--max_words", "16", "--do_train", "0",
                            "--do_eval", "1"])
    model = create_model(args, make_tiny_clip_state_dict(seed=seed, layers=2, text_layers=2))
    save_checkpoint({"state_dict": model.state_dict(), "hparams": vars(args)}, path)
    return path


def make_videos(folder, videos=VIDEOS, broken=True):
    """Write `videos` ({relative name: (frames, seed)}) at 160x120, 3 fps, plus a corrupt
    `broken.mp4` when `broken`. Returns the folder."""
    for name, (frames, seed) in videos.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_video(path, num_frames=frames, width=160, height=120, fps=FPS, keyint=6, seed=seed)
    if broken:
        write_corrupt_file(os.path.join(folder, "broken.mp4"))
    return folder
