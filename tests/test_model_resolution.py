"""Frames are made at the model's input size (ViT-L/14@336px takes 336 x 336), not a fixed 224."""
import torch

import params
from dataloaders import DATALOADERS
from modules.factory import create_model
from modules.tokenizer import SimpleTokenizer
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.tiny_datasets import write_msvd


def test_336_pixel_clip_runs_through_a_loader(tmp_path):
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1), frames=5)  # 224 x 256 videos
    args = params.get_args(["--output_dir", str(tmp_path / "out"), "--max_frames", "4", "--max_words", "12",
                            "--batch_size_val", "2", "--num_thread_reader", "0", *msvd])
    tokenizer = SimpleTokenizer()
    _, _, _, default_video, _ = next(iter(DATALOADERS["msvd"]["test"](args, tokenizer)[0]))
    assert default_video.shape[-2:] == (224, 224)  # no image_resolution: the released models' 224
    # A 336-pixel CLIP (patch 48, a 7 x 7 grid like ViT-B/32's): 50 positional rows, as 224 frames give 17 tokens.
    model = create_model(args, make_tiny_clip_state_dict(layers=2, text_layers=2, patch=48, resolution=336)).eval()
    args.image_resolution = model.clip.config.image_resolution  # what the engine sets from the built model
    loader, _ = DATALOADERS["msvd"]["test"](args, tokenizer)
    input_ids, _, _, video, video_mask = next(iter(loader))
    assert video.shape[-2:] == (336, 336)
    with torch.no_grad():
        visual, mask = model.encode_video(video, video_mask)
        sim = model.similarity(model.encode_text(input_ids), visual, mask)
    assert sim.shape == (2, 2) and torch.isfinite(sim).all()
    assert visual.abs().sum() > 0
