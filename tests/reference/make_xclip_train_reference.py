"""Write the reference outputs of the original X-CLIP's training step that
tests/test_xclip_training.py compares against.

Documented, not run in CI (it needs the original code and its dependencies). Command:

    XCLIP_ORIGINAL=/work/orig/VideoX/X-CLIP XCLIP_REFENV=/work/refenv \\
        .venv/bin/python tests/reference/make_xclip_train_reference.py

XCLIP_ORIGINAL and XCLIP_REFENV as for make_xclip_reference.py (the original's folder; a folder put
first on sys.path with timm, yacs, einops, mmcv, decord, opencv). Everything runs in fp32 (the
original's O0 path) on the CPU, on the original X-CLIP built by its `models.xclip.load` from the tiny
CLIP of tests/tiny_clip.py and loaded strictly with the seeded tiny X-CLIP weights of
tests/tiny_xclip.py (T = 8, the 6 classes of REFERENCE_LABELS), with its `build_optimizer` (which
applies FIX_TEXT's freezing) and the original config's training defaults (LR 8e-6, weight decay
1e-3, label smoothing 0.1, mixup 0.8, cutmix 1.0, switch probability 0.5). Writes, under
tests/reference/xclip/:

- train_step.json / train_step.npz, for each case of STEP_CASES (4 videos of seeded frames
  [4, 8, 3, 224, 224], labels LABELS; numpy, torch and random seeded with the case's seed just
  before the original's code runs):
  * `cutmix`, `mixup`: the original's CutmixMixupBlending then SoftTargetCrossEntropy (the seeds are
    chosen so that each branch fires once); recorded: the branch, λ as drawn and as used, the
    permutation, the box, per-video sums and sums of squares of the blended frames, the targets;
  * `label_smoothing`: timm's LabelSmoothingCrossEntropy(0.1), no blending;
  * `cross_entropy`: nn.CrossEntropyLoss;
  * `accumulated`: the original's own `train_one_epoch` (main.py) on 2 micro-batches of 2 videos with
    TRAIN.ACCUMULATION_STEPS 2 and mixup, gradients read just before its optimizer step;
  each with the loss, the logits, the gradients of SELECTED_GRADIENTS, the norm of every parameter's
  gradient and the names of the parameters that received one (the model in training mode, forward
  and backward in fp32).
- In train_step.json also: the original's 8 optimizer groups (parameter names in order, lr, weight
  decay), the trainable and frozen names, AdamW's betas and eps; and for each run of LR_RUNS, the lr
  of every group at every optimizer step and the arguments of every `step_update` call, from its
  `build_scheduler` stepped by its own `train_one_epoch` (on a stand-in model, which changes nothing
  of the schedule), plus the scheduler's `state_dict()` after the first run.
- Versions and a digest of the original's Python files used.

Compatibility shims, none of which changes what is computed: those of make_xclip_reference.py
(np.int, a pandas stand-in, both needed to import the original's main.py); `from apex import amp`
and `termcolor` stand-ins (apex is only called for OPT_LEVEL != O0, termcolor only colours log
lines); while `train_one_epoch` runs, `Tensor.cuda` returns the tensor itself and
`torch.cuda.synchronize` / `max_memory_allocated` do nothing (no GPU here).
"""
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import random
import sys
import tempfile
import types
from contextlib import contextmanager

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "xclip")
sys.path.insert(0, ROOT)
from tests.reference.make_xclip_reference import build_original, import_original, pandas_stand_in  # noqa: E402
from tests.tiny_clip import make_tiny_clip_state_dict, save_torchscript_archive  # noqa: E402
from tests.tiny_xclip import REFERENCE_LABELS, REFERENCE_SEED, reference_video  # noqa: E402

FRAMES_SEED, VIDEOS, FRAMES = 31, 4, 8
LABELS = [0, 3, 5, 1]
# (case, loss, blending, seed of numpy/torch/random). Seed 1: numpy's first draw 0.417 < 0.5, cutmix,
# with a box clipped at the top edge; seed 8: 0.873, mixup with λ 0.29 and a permutation that moves
# every video (seed 0's would have been the identity).
STEP_CASES = [("cutmix", "soft_target", True, 1), ("mixup", "soft_target", True, 8),
              ("label_smoothing", "label_smoothing", False, 2), ("cross_entropy", "cross_entropy", False, 3)]
ACCUMULATED_SEED = 5
SELECTED_GRADIENTS = [
    "visual.transformer.resblocks.0.message_fc.weight", "visual.transformer.resblocks.11.message_ln.weight",
    "visual.transformer.resblocks.11.message_attn.in_proj_bias", "mit.positional_embedding",
    "mit.resblocks.0.ln_2.bias", "prompts_generator.alpha", "prompts_generator.decoder.1.cross_attn.q_proj.weight",
    "prompts_visual_ln.weight", "visual.transformer.resblocks.5.attn.out_proj.weight",
    "visual.transformer.resblocks.5.ln_1.weight", "visual.proj", "visual.class_embedding",
]
# (name, micro-batches per epoch I, accumulation A, epochs, warm-up epochs)
LR_RUNS = [("i10_a3_e2_w0.5", 10, 3, 2, 0.5), ("i10_a1_e2_w0.5", 10, 1, 2, 0.5), ("i11_a2_e3_w0", 11, 2, 3, 0),
           ("i7_a2_e2_w1.3", 7, 2, 2, 1.3)]
ORIGINAL_FILES = ["main.py", "datasets/blending.py", "utils/optimizer.py", "models/xclip.py", "models/cct.py",
                  "models/mit.py", "models/prompt.py"]


def stand_in(name, **attributes):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


def import_training(orig):
    """The original's main.py (as module `xclip_main`: this project has a main.py too), blending,
    optimizer helpers and timm's losses."""
    sys.modules["apex"] = stand_in("apex", amp=types.SimpleNamespace())
    sys.modules["termcolor"] = stand_in("termcolor", colored=lambda text, *args, **kwargs: text)
    sys.modules["pandas"] = pandas_stand_in()
    spec = importlib.util.spec_from_file_location("xclip_main", os.path.join(os.environ["XCLIP_ORIGINAL"], "main.py"))
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    main.logger = logging.getLogger("xclip-reference")
    from datasets import blending
    from timm import loss
    from utils import optimizer
    return types.SimpleNamespace(main=main, blending=blending, optimizer=optimizer, loss=loss, **vars(orig))


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def training_config(orig, **train):
    cfg = orig.config._C.clone()
    cfg.defrost()
    cfg.DATA.NUM_FRAMES, cfg.DATA.NUM_CLASSES = FRAMES, len(REFERENCE_LABELS)
    cfg.TRAIN.OPT_LEVEL, cfg.PRINT_FREQ = "O0", 1000
    for key, value in train.items():
        setattr(cfg.TRAIN, key, value)
    cfg.freeze()
    return cfg


def group_records(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [{"names": [names[id(p)] for p in group["params"]], "lr": group["lr"],
             "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]


def blending(orig):
    return orig.blending.CutmixMixupBlending(num_classes=len(REFERENCE_LABELS), smoothing=0.1, mixup_alpha=0.8,
                                             cutmix_alpha=1.0, switch_prob=0.5)


@contextmanager
def recorded(blend, record):
    """Observe a CutmixMixupBlending call: its branch, λ as drawn, the permutation and the box.
    Every observed function still runs as it is; all are restored afterwards."""
    observed = [(blend, "do_cutmix", lambda _: record.update(branch="cutmix")),
                (blend, "do_mixup", lambda _: record.update(branch="mixup")),
                (blend, "rand_bbox", lambda box: record.update(box=[int(v) for v in box])),
                (blend.mixup_beta, "sample", lambda lam: record.update(lam_drawn=float(lam))),
                (blend.cutmix_beta, "sample", lambda lam: record.update(lam_drawn=float(lam))),
                (torch, "randperm", lambda permutation: record.update(permutation=permutation.tolist()))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in observed]
    for (owner, name, function), (_, _, store) in zip(saved, observed):
        setattr(owner, name, observer(function, store))
    try:
        yield
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


def observer(function, store):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        store(result)
        return result
    return wrapper


def final_lam(record, height, width):
    """λ as the original's blending uses it (for cutmix, recomputed from the box with its expression)."""
    if record["branch"] == "mixup":
        return record["lam_drawn"]
    x1, y1, x2, y2 = (torch.tensor(int(v)) for v in record["box"])
    return float(1 - (1.0 * (x2 - x1) * (y2 - y1) / (width * height)))


def gradient_records(model):
    arrays = {f"grad/{n}": p.grad.detach().numpy().copy()
              for n, p in model.named_parameters() if n in SELECTED_GRADIENTS}
    with_grad = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    arrays["grad_norms"] = np.array([g.double().norm().item() for _, g in with_grad])
    return arrays, [n for n, _ in with_grad]


def step_case(orig, model, texts, case, loss_kind, blend, seed):
    """One micro-batch: (blend), forward, the criterion, backward."""
    video = reference_video(FRAMES_SEED, VIDEOS, FRAMES)
    labels = torch.tensor(LABELS)
    criterion = {"soft_target": orig.loss.SoftTargetCrossEntropy(),
                 "label_smoothing": orig.loss.LabelSmoothingCrossEntropy(smoothing=0.1),
                 "cross_entropy": torch.nn.CrossEntropyLoss()}[loss_kind]
    model.zero_grad(set_to_none=True)
    record = {"case": case, "loss_kind": loss_kind, "seed": seed, "labels": LABELS}
    seed_all(seed)
    if blend:
        mixup_fn = blending(orig)
        with recorded(mixup_fn, record):
            video, targets = mixup_fn(video, labels)
        record["lam"] = final_lam(record, video.shape[-2], video.shape[-1])
    else:
        targets = labels
    model.train()
    logits = model(video, texts)
    loss = criterion(logits, targets)
    loss.backward()
    arrays, names = gradient_records(model)
    flat = video.double().flatten(1)
    arrays.update(logits=logits.detach().numpy(), targets=targets.numpy(),
                  video_sum_sumsq=torch.stack([flat.sum(1), flat.pow(2).sum(1)], 1).numpy())
    record.update(loss=loss.item(), params_with_grad=names)
    return arrays, record


@contextmanager
def without_gpu():
    """train_one_epoch moves tensors with .cuda() and synchronises; on the CPU these do nothing."""
    saved = (torch.Tensor.cuda, torch.cuda.synchronize, torch.cuda.max_memory_allocated)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.max_memory_allocated = lambda *args, **kwargs: 0
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize, torch.cuda.max_memory_allocated = saved


def accumulated_case(orig, model, texts):
    """The original's train_one_epoch, A = 2, two micro-batches of 2 videos, mixup on: one optimizer
    step; the gradients are read when it calls optimizer.step()."""
    cfg = training_config(orig, ACCUMULATION_STEPS=2, EPOCHS=1)
    optimizer = orig.optimizer.build_optimizer(cfg, model)
    scheduler = orig.optimizer.build_scheduler(cfg, optimizer, 2)
    video, labels = reference_video(FRAMES_SEED, VIDEOS, FRAMES), torch.tensor(LABELS)
    loader = [{"imgs": video[:2], "label": labels[:2]}, {"imgs": video[2:], "label": labels[2:]}]
    mixup_fn, records, losses, captured = blending(orig), [], [], {}
    criterion = orig.loss.SoftTargetCrossEntropy()

    def measured(output, target):
        value = criterion(output, target)
        losses.append(value.item())
        return value

    def observed_blend(imgs, label):
        record = {}
        with recorded(mixup_fn, record):
            result = mixup_fn(imgs, label)
        record["lam"] = final_lam(record, imgs.shape[-2], imgs.shape[-1])
        records.append(record)
        return result

    def step(*args, **kwargs):
        captured["arrays"], captured["names"] = gradient_records(model)
        return None  # the step itself is not needed
    optimizer.step = step
    seed_all(ACCUMULATED_SEED)
    with without_gpu():
        orig.main.train_one_epoch(0, model, measured, optimizer, scheduler, loader, texts, cfg, observed_blend)
    record = {"case": "accumulated", "seed": ACCUMULATED_SEED, "labels": LABELS, "accumulation": 2,
              "micro_batches": records, "micro_losses": losses, "loss": sum(v / 2 for v in losses),
              "params_with_grad": captured["names"]}
    return captured["arrays"], record


class StandIn(torch.nn.Module):
    """A model for the schedule runs: any logits will do."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(len(REFERENCE_LABELS)))

    def forward(self, images, texts):
        return images.mean(dim=(1, 2, 3, 4))[:, None] * self.weight  # (B, K)


def lr_run(orig, model, texts, name, batches, accumulation, epochs, warmup_epochs):
    """Every group's lr at every optimizer step of the original's loop, and the step_update calls."""
    cfg = training_config(orig, ACCUMULATION_STEPS=accumulation, EPOCHS=epochs, WARMUP_EPOCHS=warmup_epochs)
    optimizer = orig.optimizer.build_optimizer(cfg, model)
    scheduler = orig.optimizer.build_scheduler(cfg, optimizer, batches)
    lrs, updates = [], []
    optimizer.step = lambda *args, **kwargs: lrs.append([g["lr"] for g in optimizer.param_groups])
    update = scheduler.step_update
    scheduler.step_update = lambda t, *args, **kwargs: (updates.append(t), update(t, *args, **kwargs))
    loader = [{"imgs": torch.rand(1, FRAMES, 3, 2, 2), "label": torch.tensor([i % len(REFERENCE_LABELS)])}
              for i in range(batches)]
    with without_gpu():
        for epoch in range(epochs):
            orig.main.train_one_epoch(epoch, StandIn(), torch.nn.CrossEntropyLoss(), optimizer, scheduler, loader,
                                      texts, cfg, None)
    del scheduler.step_update  # the observer; the scheduler's state_dict() would list it
    return {"micro_batches_per_epoch": batches, "accumulation": accumulation, "epochs": epochs,
            "warmup_epochs": warmup_epochs, "lr": 8e-6, "step_lrs": lrs, "step_update_args": updates}, scheduler


def versions():
    import timm
    digest = hashlib.sha256()
    for path in ORIGINAL_FILES:
        with open(os.path.join(os.environ["XCLIP_ORIGINAL"], path), "rb") as f:
            digest.update(f.read())
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "timm": timm.__version__, "dtype": "float32", "device": "cpu",
            "original_files": ORIGINAL_FILES, "original_sha256": digest.hexdigest()}


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    orig = import_training(import_original())
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "ViT-B-32.pt")
        save_torchscript_archive(make_tiny_clip_state_dict(seed=REFERENCE_SEED), archive)
        model = build_original(orig, archive, FRAMES)
    texts = orig.tools.generate_text(types.SimpleNamespace(classes=list(enumerate(REFERENCE_LABELS))))
    optimizer = orig.optimizer.build_optimizer(training_config(orig), model)  # FIX_TEXT freezes the text tower
    meta = {"weights": f"tests/tiny_xclip.make_tiny_xclip_state_dict(seed={REFERENCE_SEED}, num_frames={FRAMES})",
            "frames": f"tests/tiny_xclip.reference_video({FRAMES_SEED}, {VIDEOS}, {FRAMES})",
            "class_names": REFERENCE_LABELS, "selected_gradients": SELECTED_GRADIENTS,
            "groups": group_records(model, optimizer), "betas": list(optimizer.defaults["betas"]),
            "eps": optimizer.defaults["eps"],
            "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
            "frozen": [n for n, p in model.named_parameters() if not p.requires_grad], "cases": {}, "lr_runs": {}}
    arrays = {}
    for case, loss_kind, blend, seed in STEP_CASES:
        case_arrays, meta["cases"][case] = step_case(orig, model, texts, case, loss_kind, blend, seed)
        arrays.update({f"{case}/{k}": v for k, v in case_arrays.items()})
    case_arrays, meta["cases"]["accumulated"] = accumulated_case(orig, model, texts)
    arrays.update({f"accumulated/{k}": v for k, v in case_arrays.items()})
    for run in LR_RUNS:
        meta["lr_runs"][run[0]], scheduler = lr_run(orig, model, texts, *run)
        meta.setdefault("scheduler_state", scheduler.state_dict())
    meta["versions"] = versions()
    np.savez_compressed(os.path.join(OUT, "train_step.npz"), **arrays)
    with open(os.path.join(OUT, "train_step.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)  # the original logs every key it initialises at INFO
    main()
