"""Released X-CLIP checkpoint files: read without yacs and without running code, loaded strictly
(XCLIP_SPEC §2), and the yacs stand-in of tests/tiny_xclip.py checked against yacs' own pickle."""
import collections
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch

from modules.checkpoint import CheckpointMismatch
from modules.xclip import build_xclip_from_checkpoint, read_xclip_checkpoint, tokenize_class_names
from tests.tiny_xclip import REFERENCE_CASES, make_tiny_xclip_state_dict, reference_video, released_config, \
    write_released_checkpoint, yacs_stand_in

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")
SMALL = dict(layers=2, text_layers=1, vocab=1000, resolution=64)  # small files for the format tests


def pickled_bytes(path):
    """The pickle inside a torch.save zip archive."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return archive.read(name)


def test_stand_in_pickles_exactly_as_yacs(tmp_path):
    """released_config_yacs.pth was written by the original's yacs config (make_xclip_reference.py)."""
    path = tmp_path / "config.pth"
    with yacs_stand_in():
        torch.save({"config": released_config(num_frames=8, num_classes=6)}, path)
    assert "yacs" not in sys.modules and "yacs.config" not in sys.modules
    assert pickled_bytes(path) == pickled_bytes(os.path.join(REFERENCE, "released_config_yacs.pth"))


def test_released_file_needs_neither_yacs_nor_code(tmp_path):
    path = str(tmp_path / "best.pth")
    state = make_tiny_xclip_state_dict(num_frames=8, **SMALL)
    write_released_checkpoint(path, state, epoch=7, max_accuracy=42.5)
    assert b"yacs.config\nCfgNode" in pickled_bytes(path)  # the file really names yacs' class
    with pytest.raises(pickle.UnpicklingError, match="yacs.config.CfgNode"):
        torch.load(path, weights_only=True)  # weights-only refuses it unless allowed, so nothing runs
    checkpoint = read_xclip_checkpoint(path)
    assert "yacs" not in sys.modules
    assert sorted(checkpoint) == ["config", "epoch", "lr_scheduler", "max_accuracy", "model", "optimizer"]
    assert (checkpoint["epoch"], checkpoint["max_accuracy"]) == (7, 42.5)
    config = checkpoint["config"]
    assert type(config) is collections.OrderedDict and config["DATA"]["NUM_FRAMES"] == 8
    assert config["MODEL"]["ARCH"] == "ViT-B/32" and config.__dict__["__immutable__"] is True
    assert len(checkpoint["optimizer"]["param_groups"]) == 8
    model = build_xclip_from_checkpoint(checkpoint, num_frames=8)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_released_file_gives_the_originals_logits(tmp_path):
    name, frames, videos, seed, names = REFERENCE_CASES[0]
    path = str(tmp_path / "ckpt_epoch_29.pth")
    write_released_checkpoint(path, make_tiny_xclip_state_dict(num_frames=frames))
    model = build_xclip_from_checkpoint(read_xclip_checkpoint(path), num_frames=frames).eval()
    with torch.no_grad():
        logits = model(reference_video(seed, videos, frames), tokenize_class_names(names))
    expected = torch.from_numpy(np.load(os.path.join(REFERENCE, "model.npz"))[f"{name}/logits"])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)  # see ATOL in test_xclip_model.py


@pytest.mark.parametrize("wrap", ["model", "state_dict", "bare", "module_prefix"])
def test_checkpoint_layouts_are_accepted(wrap):
    state = make_tiny_xclip_state_dict(num_frames=4, **SMALL)
    checkpoint = {"model": {"model": state}, "state_dict": {"state_dict": state, "epoch": 3}, "bare": state,
                  "module_prefix": {"model": {"module." + k: v for k, v in state.items()}}}[wrap]
    model = build_xclip_from_checkpoint(checkpoint, num_frames=4)
    assert torch.equal(model.state_dict()["prompts_visual_proj"], state["prompts_visual_proj"])


def test_a_missing_key_fails_naming_it():
    state = make_tiny_xclip_state_dict(num_frames=4, **SMALL)
    del state["visual.transformer.resblocks.1.message_ln.bias"]
    with pytest.raises(CheckpointMismatch, match=r"missing in the checkpoint: visual\.transformer\.resblocks\.1"
                                                 r"\.message_ln\.bias"):
        build_xclip_from_checkpoint({"model": state})


def test_an_extra_key_fails_naming_it():
    state = make_tiny_xclip_state_dict(num_frames=4, **SMALL)
    state["prompts_generator.temperature"] = torch.ones(())
    with pytest.raises(CheckpointMismatch, match=r"unexpected in the checkpoint: prompts_generator\.temperature"):
        build_xclip_from_checkpoint({"model": state})


def test_not_an_xclip_checkpoint_is_refused():
    from tests.tiny_clip import make_tiny_clip_state_dict
    with pytest.raises(ValueError, match="not an X-CLIP state dict .* use build_xclip"):
        build_xclip_from_checkpoint(make_tiny_clip_state_dict(**SMALL))
    with pytest.raises(FileNotFoundError, match="does-not-exist.pth"):
        read_xclip_checkpoint("does-not-exist.pth")
