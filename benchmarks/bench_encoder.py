"""Image-tower speed with token clustering: 4 videos x 12 frames through a ViT-B-sized tower (random
weights, fp32, CPU, inference), per configuration, against the tower without clustering.

"B6-S,K": blocks 1-6 see all 12 frames, block 7 clusters S segments of K tokens (k-medoids).
`ideal` is the speedup the token counts allow: the tower's multiply-adds (patch embedding, the
blocks' projections, MLP and attention, final projection) without and with clustering, clustering
itself counted as free. Configurations run round-robin, median of --repeats; `cluster ms` is the
mean time per forward spent in the clustering modules.

`--device cuda` measures a GPU (CUDA events for the forward; the clustering modules' time is then
measured with a synchronisation around each call). `--profile` adds, per configuration, the share
of the forward's time in each kind of operator (torch.profiler, self time): the matrix products
are the same in any implementation of a configuration, so their share bounds what the rest can gain.

    python benchmarks/bench_encoder.py --original --json bench_encoder.json
    python benchmarks/bench_encoder.py --model ViT-B/16 --original --json bench_encoder_b16.json
"""
import argparse
import os
import statistics
import sys
from contextlib import contextmanager

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modules.clip import VisionTransformer  # noqa: E402
from modules.cluster import build_cluster_specs, build_token_clusters, chunk_size_for  # noqa: E402
from modules.cluster import token_cluster  # noqa: E402
from benchmarks.bench_cluster import original_kmedoids  # noqa: E402
from benchmarks.timing import describe, machine, timed, write_results  # noqa: E402

MODELS = {"ViT-B/32": dict(patch=32, configs=["B6-6,49", "B6-4,49", "B6-3,49"]),
          "ViT-B/16": dict(patch=16, configs=["B6-4,160"])}
WIDTH, LAYERS, EMBED, RESOLUTION = 768, 12, 512, 224


class Timed(nn.Module):
    """Wraps a TokenCluster and accumulates the time of its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seconds = 0.0

    def forward(self, x):
        out, ms = timed(lambda: self.inner(x), x.device)
        self.seconds += ms / 1e3
        return out

    def post_attention(self, x):
        return self.inner.post_attention(x)


def schedule(config, patches, frames):
    """'B6-S,K' -> (cluster_num_blocks, target_frames_blocks); 'baseline' -> None."""
    if config == "baseline":
        return None
    blocks, rest = config[1:].split("-")
    segments, k = (int(v) for v in rest.split(","))
    first = int(blocks)
    return [patches] * first + [k] * (LAYERS - first), [frames] * first + [segments] * (LAYERS - first)


def tower_flops(patch, rows_tokens):
    """Multiply-adds of the tower given (rows, tokens per row) entering each block."""
    grid = RESOLUTION // patch
    rows0 = rows_tokens[0][0]
    total = rows0 * grid * grid * 3 * patch * patch * WIDTH  # patch embedding
    for rows, tokens in rows_tokens:
        total += rows * (12 * tokens * WIDTH * WIDTH + 2 * tokens * tokens * WIDTH)  # qkv, out, mlp; attention
    return total + rows_tokens[-1][0] * WIDTH * EMBED


def block_shapes(config, patch, videos, frames):
    """(rows, tokens per row) entering each block's attention for a configuration."""
    patches = (RESOLUTION // patch) ** 2
    ks, fs = schedule(config, patches, frames) or ([patches] * LAYERS, [frames] * LAYERS)
    return [(videos * f, k + 1) for k, f in zip(ks, fs)]


def hooks_for(config, visual, patch, frames):
    plan = schedule(config, (RESOLUTION // patch) ** 2, frames)
    if plan is None:
        return [None] * LAYERS
    specs = build_cluster_specs(plan[0], plan[1], frames, True, 'kmediods++', WIDTH, (RESOLUTION // patch) ** 2,
                                chunk_size_for(patch))
    return [None if m is None else Timed(m) for m in build_token_clusters(specs, visual.positional_embedding)]


def video_frames(videos, frames, seed):
    """Smooth random images; frames of a video are the same scene plus noise, as real clips."""
    g = torch.Generator().manual_seed(seed)
    scene = nn.functional.interpolate(torch.randn(videos, 1, 3, 14, 14, generator=g).flatten(0, 1),
                                      size=RESOLUTION, mode='bilinear', align_corners=False)
    scene = scene.view(videos, 1, 3, RESOLUTION, RESOLUTION)
    clip = scene + 0.3 * torch.randn(videos, frames, 3, RESOLUTION, RESOLUTION, generator=g)
    return clip.flatten(0, 1)  # (B·T, 3, H, W)


def original_kmedoids_in_chunks(x, k, chunk_size=None, threshold=1e-5, iter_limit=100, **_):
    """The original's k-medoids called on each chunk of `chunk_size` segments, as the original's tower does."""
    results = [original_kmedoids(chunk.float(), k, threshold, iter_limit)[:2] for chunk in x.split(chunk_size or len(x))]
    return tuple(torch.cat(parts) for parts in zip(*results))


# aten operators by kind, for --profile; every other operator counts as "other"
KINDS = {"matrix products": ("aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_convolution"),
         "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
         "elementwise": ("aten::mul", "aten::add", "aten::sigmoid", "aten::native_layer_norm", "aten::copy_",
                         "aten::cat", "aten::clone")}


def operator_shares(forward):
    """Share of forward()'s CPU self time per operator kind (KINDS), from one profiled call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward()
    totals = {kind: 0.0 for kind in [*KINDS, "other"]}
    for event in prof.key_averages():
        kind = next((kind for kind, names in KINDS.items() if event.key in names), "other")
        totals[kind] += event.self_cpu_time_total
    everything = sum(totals.values())
    return {kind: t / everything for kind, t in totals.items()}


@contextmanager
def original_kmedoids_in_tower(enabled):
    """Swap the tower's k-medoids for the original's formulation (bench_cluster.py) while active."""
    saved = token_cluster.batch_kmedoids
    if enabled:
        token_cluster.batch_kmedoids = original_kmedoids_in_chunks
    try:
        yield
    finally:
        token_cluster.batch_kmedoids = saved


def run_name(run):
    """(config, with the original's k-medoids) -> the name printed and written to --json."""
    return run[0] + (" (original k-medoids)" if run[1] else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/32", choices=sorted(MODELS))
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--original", action="store_true",
                        help="also run each configuration with the original's [M,K,N,N] k-medoids")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]; CUDA is timed with events")
    parser.add_argument("--profile", action="store_true", help="also the time share of each operator kind (CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    patch = MODELS[args.model]["patch"]
    visual = VisionTransformer(RESOLUTION, patch, WIDTH, LAYERS, WIDTH // 64, EMBED).eval().to(device)
    frames = video_frames(args.videos, args.frames, seed=1).to(device)
    configs = ["baseline"] + MODELS[args.model]["configs"]
    runs = [(c, False) for c in configs] + ([(c, True) for c in configs[1:]] if args.original else [])
    hooks = {run: hooks_for(run[0], visual, patch, args.frames) for run in runs}
    times = {run: [] for run in runs}
    with torch.no_grad():
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for run in runs:
                visual.set_block_hooks([None if h is None else h.to(device) for h in hooks[run]])
                with original_kmedoids_in_tower(run[1]):
                    _, ms = timed(lambda: visual(frames), device)
                if round_:
                    times[run].append(ms)
    base_ms = statistics.median(times[("baseline", False)])
    base_flops = tower_flops(patch, block_shapes("baseline", patch, args.videos, args.frames))
    results = {"machine": machine(device)}
    print(f"{args.model}, {args.videos} videos x {args.frames} frames, fp32, {describe(results['machine'])}, "
          f"median of {args.repeats}")
    print(f"{'config':>22} {'ms':>8} {'cluster ms':>10} {'speedup':>8} {'ideal':>6} {'of ideal':>8}")
    for run in runs:
        config = run[0]
        name = run_name(run)
        ms = statistics.median(times[run])
        cluster_ms = sum(h.seconds for h in hooks[run] if h is not None) * 1e3 / (args.repeats + 1)
        ideal = base_flops / tower_flops(patch, block_shapes(config, patch, args.videos, args.frames))
        results[name] = dict(ms=ms, speedup=base_ms / ms, ideal=ideal, cluster_ms=cluster_ms)
        print(f"{name:>22} {ms:>8.0f} {cluster_ms:>10.1f} {base_ms / ms:>7.2f}x {ideal:>5.2f}x "
              f"{100 * base_ms / ms / ideal:>7.0f}%")
    if args.profile:
        print("share of the forward's time: " + ", ".join([*KINDS, "other"]))
        for run in runs:
            visual.set_block_hooks([None if h is None else h.inner.to(device) for h in hooks[run]])
            with torch.no_grad(), original_kmedoids_in_tower(run[1]):
                shares = operator_shares(lambda: visual(frames))
            name = run_name(run)
            results[name]["operator_shares"] = shares
            print(f"{name:>22} " + " ".join(f"{100 * v:5.1f}%" for v in shares.values()))
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    main()
