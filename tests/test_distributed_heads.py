"""Every similarity head trains and evaluates under a real 2-process torchrun (gloo) on the CPU,
including tightTransf (it used to stop at step 2: "Expected to have finished reduction ...")."""
import json
import subprocess
import sys

import pytest

from tests.test_distributed import ROOT, free_port, logged_losses
from tests.test_train import train_flags
from tests.tiny_datasets import write_msvd, write_tiny_clip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    write_tiny_clip(str(root / "pretrained"))
    return root, write_msvd(str(root / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)


@pytest.mark.parametrize("head, precision", [("seqLSTM", "fp32"), ("seqTransf", "amp"), ("tightTransf", "amp")])
def test_two_process_run_trains_and_evaluates(workspace, tmp_path, head, precision):
    root, msvd = workspace
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "main.py",
               *train_flags(root, msvd, out, "--batch_size", "2", "--epochs", "2", "--sim_header", head,
                            "--precision", precision, "--cluster_inter", "0")]
    env = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = logged_losses(out)
    # 2 videos per process: one step per epoch; tightTransf's loss is over each process's own 2 x 2 pairs.
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [0, 1] and all(0 <= r["t2v"]["R1"] <= 100 for r in results)
