"""X-CLIP learns: the recognition demo, shortened (10 videos per class, 8 epochs), trained from
scratch by a 2-process torchrun (gloo) with gradient accumulation, reaches a validation top-1 far
above chance. The classes ("red turns blue" against "blue turns red") need the frames' order, so it
is the temporal parts that learn. The same run with amp (bfloat16 autocast on the CPU, about 12x
slower than fp32 on CPUs without bfloat16 units) is checked step for step against fp32 on a short
run instead."""
import json
import os
import subprocess
import sys

from dataloaders import demo_recognition
from tests.test_distributed import ROOT, free_port, logged_losses

CHANCE_TOP1, CHANCE_TOP5 = 100 / 20, 5 * 100 / 20


def torchrun_recognition(root, out, *flags):
    """A 2-process gloo run of main.py on the demo lists under `root`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "main.py", "--task_type", "recognition", "--datatype", "video_list",
               "--train_list", str(root / "train.txt"), "--val_list", str(root / "val.txt"),
               "--labels_csv", str(root / "labels.csv"), "--features_path", str(root / "videos"),
               "--output_dir", str(out), "--pretrained_clip_name", "demo-small", "--do_train", "1",
               "--warmup_epochs", "1", "--batch_size_val", "20", "--lr", "3e-4", "--mixup", "0",
               "--color_jitter", "0", "--gray_scale", "0", "--num_thread_reader", "0", "--n_display", "1", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    hparams = json.loads((out / "hparams_train.json").read_text())
    assert (hparams["world_size"], hparams["gradient_accumulation_steps"]) == (2, 2)
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_two_process_accumulation_run_learns_the_demo(tmp_path):
    root = tmp_path / "demo_recognition"
    demo_recognition.generate(str(root), videos_per_class=10, val_per_class=2)  # 160 training, 40 val videos
    out = tmp_path / "run"
    results = torchrun_recognition(root, out, "--precision", "fp32", "--max_frames", "6", "--epochs", "8",
                                   "--batch_size", "8", "--gradient_accumulation_steps", "2")
    # 80 videos per process, micro-batches of 8, a step every 2: 5 steps of 32 videos per epoch
    assert "10 batches per epoch, 5 optimizer steps per epoch" in (out / "log.txt").read_text()
    assert [r["epoch"] for r in results] == list(range(8)) and all(r["broken_videos"] == 0 for r in results)
    assert results[0]["top1"] < 4 * CHANCE_TOP1  # near chance after the first 5 steps (measured 7.5) ...
    assert results[-1]["top1"] >= 4 * CHANCE_TOP1 and results[-1]["top5"] >= 3 * CHANCE_TOP5  # ... (32.5, 92.5)


def test_two_process_amp_accumulation_steps_follow_fp32(tmp_path):
    """amp runs the forward in bfloat16 (the losses differ from fp32's) and trains the same model
    (they differ by bfloat16's rounding only)."""
    root = tmp_path / "demo_recognition"
    demo_recognition.generate(str(root), videos_per_class=3, val_per_class=1)  # 40 training, 20 val videos
    short = ("--max_frames", "2", "--epochs", "1", "--batch_size", "2", "--gradient_accumulation_steps", "2")
    fp32 = torchrun_recognition(root, tmp_path / "fp32", "--precision", "fp32", *short)
    amp = torchrun_recognition(root, tmp_path / "amp", "--precision", "amp", *short)
    losses_fp32, losses_amp = (logged_losses(tmp_path / run, "train/loss") for run in ("fp32", "amp"))
    assert len(losses_amp) == len(losses_fp32) == 5  # 20 videos per process: 10 micro-batches, 5 steps
    differences = [abs(a - b) for a, b in zip(losses_amp, losses_fp32)]
    assert 0 < max(differences) < 0.05, differences
    assert abs(amp[0]["top5"] - fp32[0]["top5"]) <= 10  # at most 2 of 20 videos change rank
    warning = "--precision amp on the CPU is bfloat16 autocast"
    assert warning in (tmp_path / "amp" / "log.txt").read_text()
    assert warning not in (tmp_path / "fp32" / "log.txt").read_text()
