"""torch.distributed helpers that also work when no process group is initialised."""
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
