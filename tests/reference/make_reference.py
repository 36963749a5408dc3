"""Reference outputs of the original CenterCLIP on tiny inputs, for tests/test_reference_centerclip.py.

    CENTERCLIP_ORIGINAL=/path/to/CenterCLIP python tests/reference/make_reference.py

The original is imported from that folder (nothing of it is copied here) and run on the tiny
configuration of `centerclip_setup.py`, on the CPU; the outputs go to tests/reference/centerclip/.
Shims, each for something the original cannot do on its own here:
- `np.long` (removed from numpy) is set to int64; `boto3`, `requests` and `botocore.exceptions`
  (imported for downloads that never happen) are empty stand-ins.
- The cluster table is built `WIDTH` wide: the original always makes it 768 wide, which cannot be
  added to a 64-wide tiny model (SPEC §3, FIX).
- `update_attr` of clip4clip.py, called to build the tight head, passes two arguments to a one-argument
  logger and raises a TypeError; it is replaced by one that only sets the attribute. The tight head's
  `get_similarity_logits` (CenterCLIP raises NotImplementedError) is CLIP4Clip's: `_cross_similarity`.
- CenterCLIP's copy of CLIP4Clip's `CrossEmbeddings.forward` takes position ids as its second
  argument, where `CrossModel` passes the token types (every frame would get position 1); the shim
  calls it as CLIP4Clip does, with positions 0 .. L-1 (the tight head is CLIP4Clip's, SPEC §4).
- The cross encoder's config is written for the tiny width (`cross-base` is 512 wide, 8 heads).
- Training needs a process group (the original calls barrier()): one gloo process, or two spawned
  gloo processes whose gradients are averaged as DDP averages them.
"""
import contextlib
import hashlib
import io
import json
import os
import platform
import socket
import sys
import tempfile
import types
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORIGINAL = os.environ.get("CENTERCLIP_ORIGINAL")
OPTIM_FLAGS = ["--lr", "1e-3", "--coef_lr", "0.1", "--wd", "0.2", "--warmup_proportion", "0.3",
               "--beta1", "0.85", "--beta2", "0.95", "--eps", "1e-7"]
SCHEDULE_RUN = {"num_batches": 11, "accumulation": 3, "epochs": 2}
FREEZE_LAYER_NUMS = (-1, 0, 3, 7, 12)


def install_shims():
    """Let the original import (see the module docstring); runs again in every spawned process."""
    np.long = np.int64
    for name in ("boto3", "requests", "botocore"):
        sys.modules.setdefault(name, types.ModuleType(name))
    exceptions = types.ModuleType("botocore.exceptions")
    exceptions.ClientError = type("ClientError", (Exception,), {})
    sys.modules.setdefault("botocore.exceptions", exceptions)
    sys.path[:0] = [ORIGINAL, ROOT]  # the original's `modules` must win over this project's


if ORIGINAL:
    install_shims()
    from modules import clip4clip, module_cross  # noqa: E402  (the original's)
    from modules.cluster import cluster as original_cluster  # noqa: E402
    from utils import metrics as original_metrics  # noqa: E402
    from utils.lr_scheduler import lr_scheduler  # noqa: E402
    from utils.optimization import BertAdam, prep_optim_params_groups  # noqa: E402
    from tests.reference import centerclip_setup as setup  # noqa: E402


def patch_original():
    """The code shims of the module docstring (cluster table width, update_attr, cross positions)."""
    init = original_cluster.TokenClusterInter.__init__

    def init_with_width(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "transformer_width": setup.WIDTH})
    original_cluster.TokenClusterInter.__init__ = init_with_width

    def update_attr(target_name, target_config, target_attr_name, source_config, source_attr_name, default_value=None):
        setattr(target_config, target_attr_name, getattr(source_config, source_attr_name))
        return target_config
    clip4clip.update_attr = update_attr

    embeddings_forward = module_cross.CrossEmbeddings.forward

    def clip4clip_embeddings(self, concat_embeddings, concat_type=None):
        return embeddings_forward(self, concat_embeddings, position_ids=None, concat_type=concat_type)
    module_cross.CrossEmbeddings.forward = clip4clip_embeddings


if ORIGINAL:
    patch_original()


def write_inputs(folder):
    """CLIP weights as <folder>/ViT-B-32.pt (fp16, as OpenAI ships them) and a tiny cross config."""
    torch.save(setup.clip_state_dict(), os.path.join(folder, "ViT-B-32.pt"))
    cross = os.path.join(folder, "cross-tiny")
    os.makedirs(cross, exist_ok=True)
    config = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "hidden_size": setup.WIDTH, "initializer_range": 0.02, "intermediate_size": 4 * setup.WIDTH,
              "max_position_embeddings": 77, "num_attention_heads": 1, "num_hidden_layers": 4, "vocab_size": 512}
    with open(os.path.join(cross, "cross_config.json"), "w") as f:
        json.dump(config, f)


def original_args(folder, sim_header, *extra):
    """The original's own argument parsing (params.get_args reads sys.argv and prints every value)."""
    import params  # the original's
    argv = ["params.py", "--output_dir", os.path.join(folder, "out"), "--pretrained_dir", folder,
            "--cross_model", os.path.join(folder, "cross-tiny"), *setup.flags(sim_header, *extra)]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(io.StringIO()):
        return params.get_args()


def build_original(folder, sim_header, *extra):
    """CLIP4Clip.from_pretrained as the original's main builds it, in fp32 as on a CPU, with the
    tight head's free parameters set from `setup.new_parameter_values`. Returns (model, args)."""
    args = original_args(folder, sim_header, *extra)
    model = clip4clip.CLIP4Clip.from_pretrained(args.cross_model, cache_dir=folder, state_dict=None,
                                                task_config=args).float()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in setup.new_parameter_values({n: p.shape for n, p in named.items()}).items():
            named[name].copy_(value)
    if sim_header == "tightTransf":
        model.get_similarity_logits = tight_logits(model)
    return model, args


def tight_logits(model):
    """CLIP4Clip's get_similarity_logits for the tight head (masks reshaped, cluster mask, cross)."""
    def get_similarity_logits(sequence_output, visual_output, attention_mask, video_mask, shaped=False):
        if not shaped:
            attention_mask = attention_mask.view(-1, attention_mask.shape[-1])
            video_mask = video_mask.view(-1, video_mask.shape[-1])
        if video_mask.shape[1] != visual_output.shape[1]:
            video_mask = model.get_video_mask_after_cluster(video_mask)
        return model._cross_similarity(sequence_output, visual_output, attention_mask, video_mask), ()
    return get_similarity_logits


def training_step(model, batch, rank):
    """One forward/backward in training mode. Returns (loss, name -> gradient)."""
    input_ids, input_mask, segment_ids, video, video_mask = batch
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(setup.DROPOUT_SEED + rank)
    loss = model(input_ids, segment_ids, input_mask, video, video_mask)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def one_process_training(folder):
    """Training step of each head in one process (a gloo group of one)."""
    out = {}
    for head in setup.HEADS:
        model, _ = build_original(folder, head)
        loss, grads = training_step(model, setup.batch(), rank=0)
        out[f"{head}/loss"] = loss.numpy()
        out.update({f"{head}/grad/{n}": g.numpy() for n, g in setup.gradient_slices(grads).items()})
        out[f"{head}/param_names"], out[f"{head}/param_sums"] = parameter_sums(model)
    return out


def parameter_sums(model):
    """Names and sums of every parameter, so the tests can check they built the same weights."""
    named = list(model.named_parameters())
    return np.array([n for n, _ in named]), np.array([float(p.detach().double().sum()) for _, p in named])


def two_process_worker(rank, folder, port, result_path):
    """Rank `rank` of 2: its half of the batch, the original's gather, gradients averaged (DDP)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    out = {}
    for head in setup.HEADS:
        model, _ = build_original(folder, head)
        loss, grads = training_step(model, setup.rank_slice(setup.batch(), rank, 2), rank)
        losses = [torch.zeros(()) for _ in range(2)]
        dist.all_gather(losses, loss)
        out[f"{head}/loss_per_rank"] = torch.stack(losses).numpy()
        for name, grad in setup.gradient_slices(grads).items():
            dist.all_reduce(grad)
            out[f"{head}/grad/{name}"] = (grad / 2).numpy()
    if rank == 0:
        np.savez(result_path, **out)
    dist.destroy_process_group()


def two_process_training(folder):
    """Both ranks' results, gathered by rank 0 into a temporary file."""
    path = os.path.join(folder, "two_process.npz")
    mp.spawn(two_process_worker, args=(folder, free_port(), path), nprocs=2, join=True)
    with np.load(path) as data:
        return dict(data)


def free_port():
    """A TCP port for the gloo rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def evaluation(folder):
    """The original's eval path, which is what it runs under --precision amp too (main converts the
    weights to fp32, eval_epoch has no autocast): encode, then get_similarity_logits; for each head
    and for --linear_patch 3d with a seeded conv2."""
    out = {}
    runs = [(head, head, ()) for head in setup.HEADS] + [("meanP_3d", "meanP", ("--linear_patch", "3d"))]
    for key, head, extra in runs:
        model, _ = build_original(folder, head, *extra)
        if extra:
            out["conv2_init"] = conv2_init_facts(model)
            model.clip.visual.conv2.weight.copy_(setup.conv2_weight())
        model.eval()
        input_ids, input_mask, segment_ids, video, video_mask = setup.batch()
        output = model(input_ids, segment_ids, input_mask, video, video_mask)
        logits, _ = model.get_similarity_logits(output["sequence_output"], output["visual_output"], input_mask,
                                                video_mask)
        out[f"{key}/sim"] = logits.numpy()
        out[f"{key}/visual_output"] = output["visual_output"].numpy()
    return out


def conv2_init_facts(model):
    """The 3-D patch embedding as the original builds it: [kernel, stride, padding, middle slice is
    conv1, other slices zero]."""
    conv1, conv2 = model.clip.visual.conv1.weight, model.clip.visual.conv2
    middle = torch.equal(conv2.weight[:, :, 1], conv1)
    zeros = bool((conv2.weight[:, :, 0] == 0).all() and (conv2.weight[:, :, 2] == 0).all())
    return np.array(list(conv2.kernel_size) + list(conv2.stride) + list(conv2.padding) + [middle, zeros], dtype=np.int64)


def freeze_effects(folder):
    """Names of the parameters --freeze_layer_num n freezes (the original's freeze_cip_layers)."""
    model, _ = build_original(folder, "seqTransf")
    frozen = {}
    for n in FREEZE_LAYER_NUMS:
        model.requires_grad_(True)
        model.freeze_cip_layers(n)
        frozen[str(n)] = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    model_3d, _ = build_original(folder, "meanP", "--linear_patch", "3d")
    model_3d.freeze_cip_layers(0)
    frozen["0 with --linear_patch 3d"] = sorted(name for name, p in model_3d.named_parameters() if not p.requires_grad)
    return frozen


def build_original_optimizer(model, args, num_steps):
    """The optimizer and scheduler exactly as the original's main builds them."""
    groups = prep_optim_params_groups(args, model, coef_lr=args.coef_lr)
    if args.optim == "BertAdam":
        return BertAdam(groups, lr=args.lr, warmup=args.warmup_proportion, schedule="warmup_cosine", b1=0.9, b2=0.98,
                        e=1e-6, t_total=num_steps, weight_decay=args.wd, max_grad_norm=1.0), None
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, weight_decay=args.wd)
    return optimizer, lr_scheduler(mode="cos", init_lr=args.lr, all_iters=num_steps,
                                   slow_start_iters=args.warmup_proportion * num_steps, weight_decay=args.wd)


def optimizer_structures(folder):
    """Groups (name, lr, weight decay) and the state_dict structure after one step, for both optimizers,
    on the seqTransf model with --freeze_layer_num 0 (frozen parameters are in the groups, stateless)."""
    result = {}
    for optim in ("BertAdam", "AdamW"):
        model, args = build_original(folder, "seqTransf", "--optim", optim, *OPTIM_FLAGS)
        model.freeze_cip_layers(args.freeze_layer_num)
        optimizer, scheduler = build_original_optimizer(model, args, num_steps=10.0)
        if scheduler is not None:
            scheduler(optimizer, global_step=0)
        training_step(model, setup.batch(), rank=0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        optimizer.step()
        result[optim] = state_structure(optimizer, model)
    return result


def state_structure(optimizer, model):
    """The optimizer's state dict with parameter names for its indices and (shape, dtype) for tensors."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    saved = optimizer.state_dict()
    indices = [i for group in saved["param_groups"] for i in group["params"]]
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    name_at = dict(zip(indices, names))
    groups = [{**{k: list(v) if isinstance(v, tuple) else v for k, v in group.items() if k != "params"},
               "params": [name_at[i] for i in group["params"]]} for group in saved["param_groups"]]
    state = {name_at[i]: {k: describe(v) for k, v in s.items()} for i, s in saved["state"].items()}
    return {"param_groups": groups, "state": state,
            "shapes": {n: list(p.shape) for n, p in model.named_parameters()}}


def describe(value):
    """A state entry as JSON: shape and dtype of a tensor, type and value of anything else."""
    if torch.is_tensor(value):
        return {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
    return {"type": type(value).__name__, "value": value}


def schedules():
    """Learning rates over a whole run with gradient accumulation, the original's loop without a model:
    one parameter per group, the scheduler called every micro-step, a step every `accumulation`
    micro-steps. Records, per optimizer step, each group's lr (AdamW: set by the scheduler; BertAdam:
    its get_lr() before the step, the lr it applies from the second step on) and the value the
    original logs as train/lr after the step."""
    run = SCHEDULE_RUN
    num_steps = (int(run["num_batches"] + run["accumulation"] - 1) / run["accumulation"]) * run["epochs"]
    result = {**run, "lr": 1e-3, "coef_lr": 0.1, "warmup_proportion": 0.3, "total_steps": num_steps}
    for optim in ("BertAdam", "AdamW"):
        args = types.SimpleNamespace(optim=optim, lr=1e-3, coef_lr=0.1, wd=0.2, warmup_proportion=0.3, beta1=0.9,
                                     beta2=0.98, eps=1e-6, new_added_modules=["time_embedding"])
        model = torch.nn.Module()  # one parameter per group: clip.w, clip.bias, head.w, head.bias
        model.clip = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.ones(2)) for k in ("w", "bias")})
        model.head = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.ones(2)) for k in ("w", "bias")})
        optimizer, scheduler = build_original_optimizer(model, args, num_steps)
        result[optim] = run_schedule(optimizer, scheduler, run)
    return result


def run_schedule(optimizer, scheduler, run):
    """The original's train_epoch loop around one optimizer, with constant gradients."""
    applied, logged, global_step = [], [], 0
    for _ in range(run["epochs"]):
        for step in range(run["num_batches"]):
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler(optimizer, global_step=global_step)
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = torch.full_like(p, 0.5)
            if (step + 1) % run["accumulation"] == 0:
                before = [g["lr"] for g in optimizer.param_groups] if scheduler else optimizer.get_lr()
                applied.append([float(v) for v in before])
                optimizer.step()
                global_step += 1
                logged.append(float(optimizer.param_groups[0]["lr"] if scheduler else optimizer.get_lr()[0]))
    return {"applied_lr": applied, "logged_lr": logged, "optimizer_steps_taken": global_step,
            "weight_decay": [g["weight_decay"] for g in optimizer.param_groups]}


def metric_cases():
    """The original's compute_metrics (single sentence, both directions) and multi-sentence metrics
    (tensor_text_to_video_metrics, compute_metrics of tensor_video_to_text_sim) on matrices with ties."""
    rng = np.random.default_rng(3)
    ties = np.round(rng.normal(size=(6, 6)), 1).astype(np.float32)
    ties[0, 3] = ties[0, 0]
    ties[2, :] = ties[2, 2]
    single = {"all_equal_5": np.full((5, 5), 2.0, dtype=np.float32), "ties_6": ties,
              "random_7": rng.normal(size=(7, 7)).astype(np.float32)}
    flat = np.round(rng.normal(size=(6, 3)), 1).astype(np.float32)
    flat[4, :] = flat[4, 2]
    multi = {"ties_6x3": (flat, [1, 2, 5]), "all_equal_6x3": (np.ones((6, 3), dtype=np.float32), [1, 2, 5])}
    cases = {}
    for name, sim in single.items():
        cases[name] = {"sim": sim.tolist(), "t2v": clean(original_metrics.compute_metrics(sim)),
                       "v2t": clean(original_metrics.compute_metrics(sim.T))}
    for name, (sim, cut_off_points) in multi.items():
        stacked = stack_captions(sim, cut_off_points)
        cases[name] = {"sim": sim.tolist(), "cut_off_points": cut_off_points,
                       "t2v": clean(original_metrics.tensor_text_to_video_metrics(stacked)),
                       "v2t": clean(original_metrics.compute_metrics(original_metrics.tensor_video_to_text_sim(stacked)))}
    return cases


def stack_captions(sim, cut_off_points):
    """[n_text, n_video] -> [n_video, max captions, n_video], -inf padded, as the original's eval_epoch."""
    bounds = list(zip([0] + [c + 1 for c in cut_off_points[:-1]], [c + 1 for c in cut_off_points]))
    longest = max(end - start for start, end in bounds)
    blocks = [np.concatenate([sim[s:e], np.full((longest - (e - s), sim.shape[1]), -np.inf)]) for s, e in bounds]
    return np.stack(blocks)


def clean(metrics):
    """JSON-able metrics (numpy floats to float; `cols` are the emitted ranks)."""
    return {k: [int(i) for i in v] if k == "cols" else float(v) for k, v in metrics.items()}


def versions():
    """Library versions (SVD, cdist and matmul rounding change between torch releases) and a digest
    of the original's Python files, so the run can be traced to the code it ran."""
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(ORIGINAL)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read())
    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "original_py_files_sha256": digest.hexdigest(), "device": "cpu", "threads": 1}


def main():
    if not ORIGINAL:
        sys.exit("set CENTERCLIP_ORIGINAL to the original CenterCLIP's folder")
    torch.set_num_threads(1)
    os.makedirs(setup.OUTPUT_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        write_inputs(folder)
        two = two_process_training(folder)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        one = one_process_training(folder)
        np.savez_compressed(os.path.join(setup.OUTPUT_DIR, "train_step.npz"),
                            **{f"world1/{k}": v for k, v in one.items()}, **{f"world2/{k}": v for k, v in two.items()})
        np.savez_compressed(os.path.join(setup.OUTPUT_DIR, "evaluation.npz"), **evaluation(folder))
        write_json("freeze.json", freeze_effects(folder), compact=True)
        write_json("optimizer_state.json", optimizer_structures(folder), compact=True)
        dist.destroy_process_group()
    write_json("schedules.json", schedules())
    write_json("metrics.json", metric_cases())
    write_json("versions.json", versions())


def write_json(name, value, compact=False):
    with open(os.path.join(setup.OUTPUT_DIR, name), "w") as f:
        json.dump(value, f, sort_keys=True, **({"separators": (",", ":")} if compact else {"indent": 1}))


if __name__ == "__main__":
    main()
