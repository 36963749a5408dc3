"""A real 2-process torchrun (gloo) training run against a single process on the same global batch."""
import json
import os
import socket
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as main_module
from tests.test_train import train_flags
from tests.tiny_datasets import write_msvd, write_tiny_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_losses(out, tag="train/sim_loss"):
    """The values TensorBoard holds for `tag` in run folder `out`, in step order."""
    events = EventAccumulator(os.path.join(out, "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_two_process_gloo_run_matches_single_process(tmp_path):
    write_tiny_clip(str(tmp_path / "pretrained"))
    # 4 videos, one caption each: one global batch of 4 = 2 processes x 2.
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    single = tmp_path / "single"
    main_module.main(train_flags(tmp_path, msvd, single, "--batch_size", "4"))
    ddp = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "main.py",
               *train_flags(tmp_path, msvd, ddp, "--batch_size", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    hparams = json.loads((ddp / "hparams_train.json").read_text())
    assert hparams["world_size"] == 2
    # The gathered loss of the first step equals the single-process loss of the same 4 samples.
    assert abs(logged_losses(ddp)[0] - logged_losses(single)[0]) < 1e-5
    assert len((ddp / "results.jsonl").read_text().splitlines()) == 1 and (ddp / "ckpt.pth.tar").exists()
