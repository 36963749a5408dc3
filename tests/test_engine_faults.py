"""The engine under faults: diverged weights, empty splits, replayed epochs after a crash, a resume
with another optimizer, unreadable test videos."""
import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module
from modules import engine
from modules.tasks.retrieval import RetrievalTask
from tests.test_train import train_flags
from tests.tiny_datasets import write_msvd, write_tiny_clip
from tests.video_factory import write_corrupt_file


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_tiny_clip(str(root / "pretrained"))
    msvd = write_msvd(str(root / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    return root, msvd


def test_diverged_weights_keep_the_checkpoints(workspace, tmp_path, monkeypatch):
    """Weights that turn NaN at an epoch's last step while the loss was finite: stop, write nothing."""
    root, msvd = workspace
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2"))
    saved = {name: (out / name).read_bytes() for name in ("ckpt.pth.tar", "ckpt.best.pth.tar")}
    real_after_step = RetrievalTask.after_step
    steps = []

    def diverge(model):
        real_after_step(model)
        steps.append(1)
        if len(steps) == 2:  # the last step of epoch 1
            model.clip.visual.proj.data.fill_(float("nan"))
    monkeypatch.setattr(RetrievalTask, "after_step", staticmethod(diverge))
    with pytest.raises(engine.NonFiniteWeights, match="clip.visual.proj"):
        main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "2", "--resume", "latest"))
    assert {name: (out / name).read_bytes() for name in saved} == saved
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_non_finite_similarity_writes_no_metrics(workspace, tmp_path, monkeypatch):
    root, msvd = workspace
    out = tmp_path / "eval"
    real_encode = RetrievalTask.build_model

    def nan_projection(self, args, device):
        model, checkpoint = real_encode(self, args, device)
        model.clip.visual.proj.data[0, 0] = float("nan")
        return model, checkpoint
    monkeypatch.setattr(RetrievalTask, "build_model", nan_projection)
    flags = train_flags(root, msvd, out, "--do_train", "0", "--do_eval", "1")
    with pytest.raises(engine.NonFiniteEvaluation, match="non-finite"):
        main_module.main(flags)
    assert not (out / "metrics.json").exists() and not (out / "sim_matrix.npy").exists()


def test_training_set_smaller_than_a_batch_fails_before_training(workspace, tmp_path):
    root, msvd = workspace
    with pytest.raises(ValueError, match="fewer than one batch of --batch_size 8"):
        main_module.main(train_flags(root, msvd, tmp_path / "run", "--batch_size", "8"))
    assert not (tmp_path / "run" / "ckpt.pth.tar").exists()


def test_empty_test_split_fails_before_training(tmp_path):
    write_tiny_clip(str(tmp_path / "pretrained"))
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    (tmp_path / "msvd" / "test_list.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        main_module.main(train_flags(tmp_path, msvd, tmp_path / "run", "--batch_size", "2"))
    assert not (tmp_path / "run" / "ckpt.pth.tar").exists()


def scalar_steps(out, tag):
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_after_a_crash_between_evaluation_and_checkpoint_logs_each_epoch_once(workspace, tmp_path,
                                                                                    monkeypatch):
    root, msvd = workspace
    out = tmp_path / "run"
    flags = train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "3")
    real_save = engine.save_checkpoint
    saves = []

    def crash_at_second_epoch(state, path):
        saves.append(path)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # after epoch 1's evaluation, before its checkpoint
        real_save(state, path)
    monkeypatch.setattr(engine, "save_checkpoint", crash_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main_module.main(flags)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert [json.loads(line)["epoch"] for line in (out / "results.jsonl").read_text().splitlines()] == [0, 1]
    main_module.main(flags + ["--resume", "latest"])
    assert [json.loads(line)["epoch"] for line in (out / "results.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert scalar_steps(out, "train/sim_loss") == [1, 2, 3, 4, 5, 6]
    assert scalar_steps(out, "val/R1") == [2, 4, 6]


def test_resume_with_another_optimizer_fails_at_start_naming_both(workspace, tmp_path):
    root, msvd = workspace
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2"))
    flags = train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "2", "--resume", "latest")
    flags[flags.index("AdamW")] = "BertAdam"
    with pytest.raises(ValueError, match="--optim AdamW.*--optim BertAdam"):
        main_module.main(flags)


@pytest.fixture
def mostly_broken(tmp_path):
    write_tiny_clip(str(tmp_path / "pretrained"))
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    for i in range(3):
        write_corrupt_file(str(tmp_path / "msvd" / "videos" / f"clip{i}.avi"))
    return msvd


def test_evaluation_with_most_videos_broken_stops_unless_allowed(tmp_path, mostly_broken):
    flags = train_flags(tmp_path, mostly_broken, tmp_path / "eval", "--do_train", "0", "--do_eval", "1")
    with pytest.raises(engine.TooManyBrokenVideos, match="3 of 4 test videos"):
        main_module.main(flags)
    assert not (tmp_path / "eval" / "metrics.json").exists()
    main_module.main(flags + ["--allow_blank_videos", "1"])
    result = json.loads((tmp_path / "eval" / "results.jsonl").read_text())
    assert result["broken_videos"] == 3
    assert "(broken videos: 3 of 4)" in (tmp_path / "eval" / "log.txt").read_text()


def test_seeds_derived_per_epoch_and_rank_stay_in_numpy_range():
    """The largest accepted --seed, a few epochs later on rank 1 of 2, is past numpy's 2**32."""
    engine.seed_everything((2 ** 32 - 1 + 5) * 2 + 1)
    first = np.random.rand(), torch.rand(1).item()
    engine.seed_everything(9)  # (2**32 + 4) * 2 + 1 wraps to 9
    assert (np.random.rand(), torch.rand(1).item()) == first


def test_features_path_typo_fails_at_start_naming_the_flag(workspace, tmp_path):
    root, msvd = workspace
    flags = train_flags(root, msvd, tmp_path / "run", "--batch_size", "2")
    flags[flags.index("--features_path") + 1] += "_typo"
    with pytest.raises(FileNotFoundError, match="--features_path"):
        main_module.main(flags)
    assert not (tmp_path / "run" / "ckpt.pth.tar").exists() and not (tmp_path / "run" / "tensorboard").exists()
