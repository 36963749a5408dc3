"""Training-step time and peak memory with token clustering, against training without it.

ViT-B/32-sized CLIP with random weights, meanP, AdamW, fp32, the default --freeze_layer_num 0
(embeddings frozen), 4 videos x 12 frames of random pixels and 32-token captions per step (no data
loading). "plain autograd" configurations turn the lean backward off (modules/recompute.py: every
saved tensor kept, as in the original); ratios are to the first configuration, the unclustered
model with plain autograd. Each configuration runs in its own
process (peak memory is per process): peak resident memory on CPU (VmHWM, reset after a warm-up
step so it covers steady-state steps), `torch.cuda.max_memory_allocated` on CUDA. Configurations
run round-robin; times are medians over every measured step of every repetition.

    python benchmarks/bench_train.py --json bench_train.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (segments after block 6 or None for no clustering, lean backward)
CONFIGS = {"baseline, plain autograd": (None, False), "B6-4,49, plain autograd": (4, False),
           "baseline": (None, True), "B6-4,49": (4, True), "B6-3,49": (3, True)}


def flags_for(config, frames):
    segments = CONFIGS[config][0]
    flags = ["--output_dir", "unused", "--max_frames", str(frames), "--max_words", "32", "--optim", "AdamW"]
    if segments is None:
        return flags
    return flags + ["--cluster_inter", "1", "--cluster_num_blocks", *["49"] * 12,
                    "--target_frames_blocks", *[str(frames)] * 6, *[str(segments)] * 6]


def rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    """Reset the process's peak resident set size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(config, steps, videos, frames):
    """One configuration in this process: prints {"ms": [...], "peak_mb": .., "rest_mb": ..}."""
    sys.path.insert(0, ROOT)
    import torch

    import params
    from modules.clip import random_clip_state_dict
    from modules.factory import create_model
    from modules.optim import build_optimizer, freeze_clip_layers
    from modules.recompute import set_lean_backward

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = params.get_args(flags_for(config, frames))
    model = create_model(args, random_clip_state_dict("ViT-B/32")).to(device).train()
    set_lean_backward(model, CONFIGS[config][1])
    freeze_clip_layers(model.clip, args.freeze_layer_num)  # the default 0 freezes the embeddings, as training does
    optimizer, schedule = build_optimizer(model, "AdamW", 1e-4, 1e-3, 0.2, (0.9, 0.98), 1e-6, 100, 0.1,
                                          args.new_added_modules)
    ids = torch.randint(1, 49000, (videos, 1, 32), device=device)
    ids[:, 0, -1] = 49407
    batch = [ids, torch.ones_like(ids), torch.zeros_like(ids),
             torch.randn(videos, 1, frames, 3, 224, 224, device=device),
             torch.ones(videos, 1, frames, dtype=torch.long, device=device)]

    def step(i):
        schedule.set_step(i)
        model(*batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up: allocates gradients and optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated()
    else:
        reset_peak()
        rest = rss_bytes("VmRSS")
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_bytes("VmHWM")
    print(json.dumps({"ms": times, "peak_mb": peak / 2 ** 20, "rest_mb": rest / 2 ** 20}))


def run_worker(config, args):
    # Large blocks straight from mmap, so freed memory leaves the resident set (glibc otherwise
    # keeps it in the heap and the peak would not reflect live tensors).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, "--worker", config, "--steps", str(args.steps),
                          "--videos", str(args.videos), "--frames", str(args.frames)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="processes per configuration")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per process")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        help="configurations to run; the first is the reference of the ratios")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps, args.videos, args.frames)
    runs = {config: [] for config in args.configs}
    for _ in range(args.repeats):
        for config in args.configs:
            runs[config].append(run_worker(config, args))
    results = {}
    for config, reports in runs.items():
        results[config] = {"ms": statistics.median(t for r in reports for t in r["ms"]),
                           "peak_mb": statistics.median(r["peak_mb"] for r in reports),
                           "rest_mb": statistics.median(r["rest_mb"] for r in reports)}
    base = results[args.configs[0]]
    print(f"{'config':24} {'step ms':>9} {'time ratio':>10} {'peak MB':>9} {'peak ratio':>10} "
          f"{'step MB':>8} {'step ratio':>10}")
    for config, r in results.items():
        r["time_ratio"] = r["ms"] / base["ms"]
        r["peak_ratio"] = r["peak_mb"] / base["peak_mb"]
        r["step_mb"] = r["peak_mb"] - r["rest_mb"]
        r["step_ratio"] = r["step_mb"] / (base["peak_mb"] - base["rest_mb"])
        print(f"{config:24} {r['ms']:9.0f} {r['time_ratio']:10.3f} {r['peak_mb']:9.0f} {r['peak_ratio']:10.3f} "
              f"{r['step_mb']:8.0f} {r['step_ratio']:10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
