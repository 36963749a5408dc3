"""A researcher's day: a checkpoint's flags at evaluation, --config FILE.json, --resume latest on a
fresh folder, a folder of another run, one-line errors in log.txt, features and weights out."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module
import params
from modules.checkpoint import read_checkpoint
from tests.test_params import ROOT
from tests.test_train import train_flags
from tests.tiny_datasets import SCHEDULE, write_msvd, write_tiny_clip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained with clustering, 4 frames and 12 words (not the defaults: 100 frames, 20 words)."""
    root = tmp_path_factory.mktemp("day")
    write_tiny_clip(str(root / "pretrained"))
    msvd = write_msvd(str(root / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    main_module.main(train_flags(root, msvd, root / "run", "--batch_size", "2"))
    return root, msvd


def data_flags(root, msvd, out):
    return ["--output_dir", str(out), "--pretrained_dir", str(root / "pretrained"), "--num_thread_reader", "0",
            "--batch_size_val", "4", *msvd]


def test_evaluation_takes_the_checkpoints_model_flags(trained, tmp_path):
    root, msvd = trained
    out = tmp_path / "eval"
    flags = data_flags(root, msvd, out) + ["--do_train", "0", "--do_eval", "1", "--resume",
                                            str(root / "run" / "ckpt.pth.tar")]
    main_module.main(flags)
    args = params.get_args(flags)
    assert (args.max_frames, args.max_words, args.cluster_inter) == (4, 12, 1)
    assert args.cluster_num_blocks == [int(v) for v in SCHEDULE[3:15]]
    log = (out / "log.txt").read_text()
    assert "--max_frames 4 taken from" in log and "--max_words 12 taken from" in log
    # The training run's own evaluation of the same weights gave the same metrics.
    assert json.loads((out / "metrics.json").read_text()) == json.loads((root / "run" / "metrics.json").read_text())
    given = params.get_args(flags + ["--max_frames", "8"])  # given on the command line: it wins, and is noted
    assert given.max_frames == 8 and any("--max_frames 8 as given" in n for n in given.startup_notes)


def test_config_json_sets_defaults_and_flags_win(trained, tmp_path):
    root, msvd = trained
    config = str(root / "run" / "hparams_train.json")
    args = params.get_args(["--output_dir", str(tmp_path), "--config", config, "--epochs", "3"])
    saved = json.loads(open(config).read())
    assert (args.max_frames, args.optim, args.lr, args.epochs) == (saved["max_frames"], "AdamW", saved["lr"], 3)
    assert args.batch_size == saved["batch_size"]  # the micro-batch round-trips
    assert args.output_dir == str(tmp_path)


def test_resume_latest_without_a_checkpoint_starts_from_scratch(trained, tmp_path):
    root, msvd = trained
    out = tmp_path / "requeued"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--resume", "latest"))
    assert "holds no checkpoint yet; starting from scratch" in (out / "log.txt").read_text()
    assert read_checkpoint(str(out / "ckpt.pth.tar"))["epoch"] == 1
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--resume", "latest"))  # nothing left
    assert "nothing left to train" in (out / "log.txt").read_text()
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_output_dir_of_another_run_is_refused_unless_overwrite(trained, tmp_path):
    root, msvd = trained
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2"))
    first = (out / "ckpt.pth.tar").read_bytes()
    with pytest.raises(ValueError, match="holds another run .*--overwrite 1"):
        main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--seed", "7"))
    assert (out / "ckpt.pth.tar").read_bytes() == first
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--seed", "7", "--overwrite", "1"))
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    assert len(os.listdir(out / "tensorboard")) == 1
    assert (out / "ckpt.pth.tar").read_bytes() != first


def test_tensorboard_has_both_directions_and_the_log_names_the_best_epoch(trained):
    root, _ = trained
    events = EventAccumulator(str(root / "run" / "tensorboard"))
    events.Reload()
    assert {"val/R1", "val/v2t_R1", "val/v2t_MeanR"} <= set(events.Tags()["scalars"])
    log = (root / "run" / "log.txt").read_text()
    assert "last epoch 0: T2V R@1" in log and "best epoch 0: T2V R@1" in log and "ckpt.best.pth.tar holds it" in log


def run_cli(*argv):
    return subprocess.run([sys.executable, "main.py", *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_expected_errors_are_one_line_in_the_console_and_log(trained, tmp_path):
    root, msvd = trained
    flags = data_flags(root, msvd, tmp_path / "typo")
    flags[flags.index("--features_path") + 1] += "_typo"
    result = run_cli(*flags, "--do_train", "0", "--do_eval", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "--features_path" in errors[0]
    assert "--features_path" in (tmp_path / "typo" / "log.txt").read_text()
    result = run_cli(*data_flags(root, msvd, tmp_path / "flag"), "--lr", "-1")
    assert result.returncode == 2 and "--lr" in (tmp_path / "flag" / "log.txt").read_text()


def test_features_and_weights_out(trained, tmp_path):
    root, msvd = trained
    ckpt = str(root / "run" / "ckpt.pth.tar")
    features = tmp_path / "features"
    main_module.main(data_flags(root, msvd, tmp_path / "eval") + ["--do_train", "0", "--do_eval", "1", "--resume",
                                                                   ckpt, "--save_feature_path", str(features)])
    text = np.load(features / "text_features.npy")
    video, masks = np.load(features / "video_features.npy"), np.load(features / "video_masks.npy")
    texts, videos = json.loads((features / "texts.json").read_text()), json.loads((features / "videos.json").read_text())
    assert text.shape == (4, 64) and video.shape == (4, 2, 64) and masks.shape == (4, 2)  # 2 segments after clustering
    assert len(texts) == 4 and [os.path.basename(v) for v in videos] == [f"clip{i}.avi" for i in range(4)]
    # The features give back the similarity matrix of the evaluation (meanP).
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    v = video / np.linalg.norm(video, axis=2, keepdims=True)
    v = (v * masks[..., None]).sum(1) / masks.sum(1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scale = np.exp(read_checkpoint(ckpt)["state_dict"]["clip.logit_scale"].item())
    np.testing.assert_allclose(scale * t @ v.T, np.load(tmp_path / "eval" / "sim_matrix.npy"), atol=1e-4)

    small = tmp_path / "weights.pth"
    main_module.main(data_flags(root, msvd, tmp_path / "export") + ["--do_train", "0", "--resume", ckpt,
                                                                     "--export_weights", str(small), "--export_fp16", "1"])
    exported = read_checkpoint(str(small))
    assert set(exported) == {"state_dict", "arch", "hparams", "clip_config"}
    assert exported["state_dict"]["clip.visual.proj"].dtype == torch.float16
    assert exported["clip_config"]["activation"] == "quick_gelu" and exported["clip_config"]["vision_heads"] == 1
    assert os.path.getsize(small) < os.path.getsize(ckpt) / 2  # no optimizer state, half the bytes per weight
    main_module.main(data_flags(root, msvd, tmp_path / "eval_small") + ["--do_train", "0", "--do_eval", "1",
                                                                         "--resume", str(small)])
    np.testing.assert_allclose(np.load(tmp_path / "eval_small" / "sim_matrix.npy"),
                               np.load(tmp_path / "eval" / "sim_matrix.npy"), atol=5e-2)


def test_save_freq_keeps_per_epoch_copies_by_xclips_rule(trained, tmp_path):
    """--save_freq n: a verified copy ckpt_epoch_<e>.pth.tar when e % n == 0 and at the last epoch
    (X-CLIP's SAVE_FREQ); such copies mark the folder as a run's."""
    root, msvd = trained
    out = tmp_path / "run"
    main_module.main(train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "4", "--save_freq", "2"))
    kept = sorted(name for name in os.listdir(out) if name.startswith("ckpt_epoch_"))
    assert kept == ["ckpt_epoch_0.pth.tar", "ckpt_epoch_0.pth.tar.sha256", "ckpt_epoch_2.pth.tar",
                    "ckpt_epoch_2.pth.tar.sha256", "ckpt_epoch_3.pth.tar", "ckpt_epoch_3.pth.tar.sha256"]
    # each holds the next epoch to run, as ckpt.pth.tar does
    assert read_checkpoint(str(out / "ckpt_epoch_2.pth.tar"))["epoch"] == 3
    assert (out / "ckpt_epoch_3.pth.tar").read_bytes() == (out / "ckpt.pth.tar").read_bytes()


def test_save_freq_defaults_none_for_retrieval_every_epoch_for_recognition(tmp_path, capsys):
    with pytest.raises(SystemExit):
        params.get_args(["--output_dir", str(tmp_path), "--save_freq", "-1"])
    assert "--save_freq must be >= 0" in capsys.readouterr().err
    assert params.get_args(["--output_dir", str(tmp_path)]).save_freq == 0
    recognition = ["--task_type", "recognition", "--val_list", "v.txt", "--labels_csv", "l.csv", "--do_train", "0",
                   "--do_eval", "1"]
    assert params.get_args(["--output_dir", str(tmp_path), *recognition]).save_freq == 1
