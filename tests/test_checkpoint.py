import os

import numpy as np
import pytest
import torch

from modules.checkpoint import CheckpointMismatch, load_model_weights, read_checkpoint, save_checkpoint
from modules.clip import build_clip
from modules.retrieval import RetrievalModel
from tests.tiny_clip import make_tiny_clip_state_dict


def tiny_model(sim_header="meanP", seed=0):
    torch.manual_seed(seed)
    return RetrievalModel(build_clip(make_tiny_clip_state_dict(layers=2, text_layers=2, seed=seed)),
                          sim_header=sim_header, cross_num_hidden_layers=2)


def released_format(model):
    """As the original saves under DDP: `module.` prefix, the position_ids buffer, numpy scalars."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    state["module.clip.visual.position_ids"] = torch.arange(50)[None]
    return {"epoch": 4, "global_step": 100, "arch": "eclip", "state_dict": state,
            "best_acc1": np.float64(44.1), "optimizer": {}}


def test_released_format_loads(tmp_path):
    source = tiny_model("seqTransf", seed=1)
    path = tmp_path / "ckpt.best.pth.tar"
    torch.save(released_format(source), path)
    target = tiny_model("seqTransf", seed=2)
    load_model_weights(target, read_checkpoint(str(path)))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_mismatch_lists_keys_and_hints_the_flag(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(released_format(tiny_model("seqTransf")), path)
    with pytest.raises(CheckpointMismatch) as err:
        load_model_weights(tiny_model("meanP"), read_checkpoint(str(path)))
    message = str(err.value)
    assert "unexpected in the checkpoint" in message and "frame_position_embeddings.weight" in message
    assert "--sim_header seqTransf" in message


def test_shape_mismatch_is_reported():
    model = tiny_model()
    state = dict(model.state_dict())
    state["clip.visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatch, match="shape differs: clip.visual.proj"):
        load_model_weights(model, {"state_dict": state})


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint({"epoch": 1}, str(path))
    def failing_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, str(path))
    assert read_checkpoint(str(path)) == {"epoch": 1}  # the good file is untouched
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "ckpt.pth.tar.sha256"]  # no temporary left behind


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(str(tmp_path / "nope.pth"))
