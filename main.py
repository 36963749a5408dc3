"""Train and evaluate CLIP video models: text-video retrieval (CenterCLIP, the default) and video
recognition (X-CLIP, `--task_type recognition`).

    python main.py --output_dir OUT [flags]                       # one process (CPU or one GPU)
    torchrun --nproc_per_node N main.py --output_dir OUT [flags]  # DDP, multi-node by torchrun's flags

`python params.py --help` lists the flags. Every evaluation writes its metrics to OUT/metrics.json
(and the task's matrix: OUT/sim_matrix.npy or OUT/scores.npy); training also writes log.txt,
hparams_train.json, results.jsonl, TensorBoard scalars under OUT/tensorboard, and
ckpt.pth.tar / ckpt.best.pth.tar.
"""
import faulthandler
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

import params
from modules import distributed as du
from modules import engine
from modules.tasks import build_task


def init_distributed(args):
    """Join torchrun's env:// group when launched by it (nccl on CUDA, gloo on CPU); pick the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = args.dist_backend if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(minutes=args.dist_timeout))
    if torch.cuda.is_available():
        torch.cuda.set_device(args.local_rank)
        device = torch.device("cuda", args.local_rank)
    else:
        device = torch.device("cpu")
    args.world_size, args.rank = du.get_world_size(), du.get_rank()
    args.n_gpu = args.world_size if device.type == "cuda" else 0
    return device


def setup_output(args):
    """Output folder, log.txt and console logging (rank 0 logs at --debug/INFO, others warn)."""
    os.makedirs(args.output_dir, exist_ok=True)
    handlers = [logging.StreamHandler()]
    if du.is_main_process():
        handlers.append(logging.FileHandler(os.path.join(args.output_dir, "log.txt")))
        params.save_hparams(args, args.output_dir)
    logging.basicConfig(level=args.log_level if du.is_main_process() else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def main(argv=None):
    faulthandler.enable()  # a native crash (e.g. in a decoder) prints a traceback, not a bare exit code
    args = params.get_args(argv)
    device = init_distributed(args)
    setup_output(args)
    engine.seed_everything(args.seed + args.rank)
    main_work = du.MainProcessWork(timedelta(minutes=args.dist_timeout))
    task = build_task(args)
    model, checkpoint = task.build_model(args, device)
    if args.inference_speed_test:
        main_work.run(lambda: task.inference_speed_test(model, engine.evaluation_loader(task, args), device, args))
    elif args.do_eval:  # with --do_train 1 too: evaluate once and stop, as the original
        main_work.run(lambda: task.evaluate(model, engine.evaluation_loader(task, args), device, args))
    else:
        engine.train(task, model, device, args, checkpoint, main_work)
    if du.is_distributed():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
