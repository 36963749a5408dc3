"""The protocols end to end through main.py, on the recognition demo's lists: few-shot training
(--shots K --seed, the list used written down) and zero-shot evaluation over several splits (each
split's top-1 as when evaluated alone, then their mean and population std)."""
import json

import numpy as np
import pytest

import main as main_module
from dataloaders import demo_recognition
from dataloaders.protocols import few_shot_subset
from dataloaders.video_list import read_class_names, read_video_list


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols") / "demo_recognition"
    demo_recognition.generate(str(root), videos_per_class=3, val_per_class=1)  # 40 training, 20 val videos
    return root


def flags(root, out, *extra):
    return ["--task_type", "recognition", "--datatype", "video_list", "--features_path", str(root / "videos"),
            "--output_dir", str(out), "--pretrained_clip_name", "demo-small", "--max_frames", "2",
            "--batch_size_val", "10", "--num_thread_reader", "0", "--precision", "fp32", *extra]


@pytest.fixture(scope="module")
def few_shot_run(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("few_shot")
    main_module.main(flags(demo, out, "--do_train", "1", "--train_list", str(demo / "train.txt"),
                           "--val_list", str(demo / "val.txt"), "--labels_csv", str(demo / "labels.csv"),
                           "--shots", "1", "--seed", "5", "--epochs", "1", "--batch_size", "4", "--mixup", "0",
                           "--save_freq", "0", "--use_checkpoint", "1"))
    return out


def test_few_shot_trains_on_k_videos_per_class_and_writes_them_down(demo, few_shot_run):
    names = read_class_names(str(demo / "labels.csv"))
    written = read_video_list(str(few_shot_run / "few_shot_train_list.txt"), "", len(names))
    full = read_video_list(str(demo / "train.txt"), "", len(names))
    assert written == few_shot_subset(full, class_names=names, shots=1, seed=5)
    assert sorted(video.label for video in written) == list(range(20))  # one per class
    log = (few_shot_run / "log.txt").read_text()
    assert "training on 20 samples: 5 batches per epoch" in log  # not the 40 of train.txt
    assert "--use_checkpoint: the vision blocks train in 3 checkpointed segments" in log
    assert json.loads((few_shot_run / "hparams_train.json").read_text())["shots"] == 1


def test_zero_shot_reports_every_split_then_mean_and_population_std(demo, few_shot_run, tmp_path):
    checkpoint = str(few_shot_run / "ckpt.best.pth.tar")
    lists = [(demo / "val_unseen.txt", demo / "labels_unseen.csv"), (demo / "val_seen.txt", demo / "labels_seen.csv")]
    alone = []
    for k, (path, labels) in enumerate(lists):
        out = tmp_path / f"alone{k}"
        main_module.main(flags(demo, out, "--do_train", "0", "--do_eval", "1", "--resume", checkpoint,
                               "--val_list", str(path), "--labels_csv", str(labels)))
        alone.append((json.loads((out / "metrics.json").read_text()), np.load(out / "scores.npy")))
    out = tmp_path / "zero_shot"  # no --val_list / --labels_csv: the splits bring their own classes
    main_module.main(flags(demo, out, "--do_train", "0", "--do_eval", "1", "--resume", checkpoint,
                           "--zero_shot_lists", *[str(p) for p, _ in lists],
                           "--zero_shot_labels", *[str(c) for _, c in lists]))
    metrics = json.loads((out / "metrics.json").read_text())
    top1 = [m["top1"] for m, _ in alone]
    assert [s["top1"] for s in metrics["splits"]] == top1 and [s["list"] for s in metrics["splits"]] == \
        [str(p) for p, _ in lists]
    assert metrics["top1"] == pytest.approx(np.mean(top1)) and metrics["top1_std"] == pytest.approx(np.std(top1))
    assert metrics["top5"] == pytest.approx(np.mean([m["top5"] for m, _ in alone]))
    for k, (_, scores) in enumerate(alone):
        np.testing.assert_array_equal(np.load(out / f"scores_{k}.npy"), scores)
        assert scores.shape == ((15, 5) if k == 0 else (15, 15))  # 3 videos of 5 held-out classes; 1 of 15 seen
