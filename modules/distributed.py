"""torch.distributed helpers that also work when no process group is initialised."""
import threading

import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


class AllGatherWithLocalGrad(torch.autograd.Function):
    """Concatenate `x` [b, ...] of every rank along dim 0; the gradient flows back to this rank's
    slice only (as CLIP4Clip's AllGather), so each rank's loss sees the whole contrastive batch."""

    @staticmethod
    def forward(ctx, x):
        ctx.batch_size = x.shape[0]
        ctx.rank = dist.get_rank()
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad):
        start = ctx.batch_size * ctx.rank
        return grad[start:start + ctx.batch_size]


def all_gather_with_local_grad(x):
    """x [b, ...] -> [world·b, ...]; identity when not distributed."""
    return AllGatherWithLocalGrad.apply(x) if is_distributed() else x


# Messages rank 0 broadcasts to the waiting ranks while it works alone.
WORKING, DONE, FAILED = 0, 1, 2


class MainProcessWork:
    """Let rank 0 work alone (evaluation, checkpoints) while the other ranks wait, with a heartbeat.

    A plain barrier would trip the process group's timeout (`--dist_timeout`) whenever rank 0's
    evaluation takes longer than it; without a timeout, a frozen rank hangs the others forever.
    Here rank 0 broadcasts WORKING every `interval` seconds from a thread, over a gloo group of
    its own, and DONE or FAILED at the end; the others wait for each message within the timeout,
    so they give up only when rank 0 stops answering, and fail when rank 0 failed.

    Create it on every rank at start-up (new groups must be created by all ranks in one order).
    """

    def __init__(self, timeout):
        self.group = dist.new_group(backend="gloo", timeout=timeout) if is_distributed() else None
        self.interval = max(min(timeout.total_seconds() / 4, 30.0), 0.1)

    def run(self, fn):
        """fn() on rank 0 (its result is returned there, None elsewhere); every rank returns together."""
        if self.group is None:
            return fn()
        if get_rank() != 0:
            self._wait()
            return None
        stop, status = threading.Event(), [FAILED]
        beat = threading.Thread(target=self._beat, args=(stop, status), daemon=True)
        beat.start()
        try:
            result = fn()
            status[0] = DONE
            return result
        finally:
            stop.set()
            beat.join()

    def _send(self, message):
        dist.broadcast(torch.tensor([message]), src=0, group=self.group)

    def _beat(self, stop, status):
        while not stop.wait(self.interval):
            self._send(WORKING)
        self._send(status[0])

    def _wait(self):
        message = torch.tensor([WORKING])
        while message.item() == WORKING:
            dist.broadcast(message, src=0, group=self.group)
        if message.item() == FAILED:
            raise RuntimeError("rank 0 failed while the other ranks waited for it (see rank 0's log)")
