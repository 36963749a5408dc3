"""--dist_timeout under torchrun (gloo): a frozen rank stops the run within the timeout, and a rank-0
evaluation longer than the timeout does not trip it (the waiting ranks get a heartbeat)."""
import os
import signal
import subprocess
import sys
import time

from tests.test_distributed import ROOT, free_port
from tests.test_train import train_flags
from tests.tiny_datasets import write_msvd, write_tiny_clip

# Runs main.main with RetrievalTask.evaluate made slower than --dist_timeout.
SLOW_EVALUATION = """
import sys, time
sys.path.insert(0, {root!r})
import main
from modules.tasks.retrieval import RetrievalTask
real = RetrievalTask.evaluate
def slow(self, *args, **kwargs):
    time.sleep({seconds})
    return real(self, *args, **kwargs)
RetrievalTask.evaluate = slow
main.main(sys.argv[1:])
"""


def torchrun(script, flags):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), script, *flags]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def dataset(tmp_path):
    write_tiny_clip(str(tmp_path / "pretrained"))
    return write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)


def test_rank0_evaluation_longer_than_the_timeout_does_not_trip_it(tmp_path):
    msvd = dataset(tmp_path)
    script = tmp_path / "slow_eval.py"
    script.write_text(SLOW_EVALUATION.format(root=ROOT, seconds=20))
    out = tmp_path / "run"
    flags = train_flags(tmp_path, msvd, out, "--batch_size", "2", "--dist_timeout", "0.1")  # 6 s
    result = subprocess.run(torchrun(str(script), flags), cwd=ROOT, env=environment(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "ckpt.pth.tar").exists()


def worker_pids(parent):
    """PIDs of the direct children of `parent` by their RANK environment variable."""
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if ppid == parent and b"RANK" in env:
            pids[int(env[b"RANK"])] = int(entry)
    return pids


def wait_for(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_frozen_rank_stops_the_run_within_the_timeout(tmp_path):
    msvd = dataset(tmp_path)
    out = tmp_path / "run"
    flags = train_flags(tmp_path, msvd, out, "--batch_size", "2", "--epochs", "200", "--dist_timeout", "0.25")
    process = subprocess.Popen(torchrun("main.py", flags), cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    frozen = None
    try:
        assert wait_for(lambda: (out / "ckpt.pth.tar").exists(), 300), "training did not reach epoch 1"
        frozen = worker_pids(process.pid)[1]
        os.kill(frozen, signal.SIGSTOP)
        stopped_at = time.time()
        output, _ = process.communicate(timeout=240)
        waited = time.time() - stopped_at
    finally:
        if frozen is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(frozen, sig)
                except ProcessLookupError:
                    pass
        process.kill()
    assert process.returncode != 0
    # 15 s of --dist_timeout, then torchrun stops the workers; far from gloo's 30 minutes.
    assert waited < 120, waited
    assert "imed out" in output or "timeout" in output.lower(), output[-3000:]
