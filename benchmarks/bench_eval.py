"""End-to-end evaluation throughput: this project's pipeline against the original's formulation.

An eval-only run over a generated test set: data loading with --num_thread_reader workers
(decoding, sampling 12 frames, crops), video and caption encoding, the similarity matrix and the
retrieval metrics. Same model (ViT-B/32-sized CLIP with random weights, meanP, clustering
B6-4,49 by default), same frames, same numbers:
- ``ours``: the project's reader (decodes only the groups of pictures that hold sampled frames)
  and the project's k-medoids (all chunks in one batched call);
- ``original``: every frame decoded, as the original's reader does, and the original's k-medoids
  formulation (bench_cluster.py) called chunk by chunk.
The test set: --videos H.264 videos of 15-60 s at 3 fps, 398x224 (a 224-pixel shorter side, as
preprocess/compress_video.py leaves them), libx264 preset medium, a keyframe every 2 s; written
once into --data_dir (the system's temporary folder by default). Both pipelines run interleaved for every worker count (median of
--repeats); their similarity matrices are checked equal.

    python benchmarks/bench_eval.py --num_thread_reader 0 1 2 --json bench_eval.json
"""
import argparse
import os
import statistics
import sys
import tempfile

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_decode import write_benchmark_video  # noqa: E402
from benchmarks.bench_encoder import original_kmedoids_in_tower, schedule  # noqa: E402
from benchmarks.timing import describe, machine, timed, write_results  # noqa: E402
from dataloaders.video_reader import VideoReader  # noqa: E402
from modules.clip import build_clip, random_clip_state_dict  # noqa: E402
from modules.cluster import build_cluster_specs, build_token_clusters, chunk_size_for  # noqa: E402
from modules.metrics import retrieval_metrics  # noqa: E402
from modules.retrieval import RetrievalModel  # noqa: E402

FRAMES, FPS, KEYINT, WORDS = 12, 3, 6, 32


class Clips(Dataset):
    """(video [1, T, 3, 224, 224], mask [1, T]) of each file, read by `reader`."""

    def __init__(self, paths, reader):
        self.paths, self.reader = paths, reader

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        video, mask = self.reader(self.paths[i])
        return video, torch.from_numpy(mask)


def make_videos(folder, count, seed=0):
    """`count` videos of 15-60 s (spread evenly, shuffled), written once; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    seconds = np.random.default_rng(seed).permutation(np.linspace(15, 60, count).round().astype(int))
    paths = []
    for i, length in enumerate(seconds):
        path = os.path.join(folder, f"video{i:04d}_{length}s.mp4")
        if not os.path.exists(path):
            write_benchmark_video(path + ".part.mp4", int(length) * FPS, KEYINT)
            os.replace(path + ".part.mp4", path)
        paths.append(path)
    return paths


def build_model(config, device):
    """ViT-B/32-sized CLIP (random weights) with the clustering of `config` ("B6-S,K") and meanP."""
    clip = build_clip(random_clip_state_dict("ViT-B/32"))
    visual = clip.visual
    patches = visual.positional_embedding.shape[0] - 1
    blocks, frames = schedule(config, patches, FRAMES)
    specs = build_cluster_specs(blocks, frames, FRAMES, True, 'kmediods++', visual.conv1.weight.shape[0], patches,
                                chunk_size_for(visual.patch_size))
    visual.set_block_hooks(build_token_clusters(specs, visual.positional_embedding))
    return RetrievalModel(clip, sim_header="meanP").eval().to(device)


@torch.no_grad()
def evaluate(model, loader, captions, batch_size, device):
    """The eval loop: encode every video and caption, similarity matrix, metrics. Returns sim [n, n]."""
    visual, masks = [], []
    for video, mask in loader:
        features, mask = model.encode_video(video.to(device), mask.to(device))
        visual.append(features)
        masks.append(mask)
    text = torch.cat([model.encode_text(ids.to(device)) for ids in captions.split(batch_size)])
    sim = torch.cat([model.similarity(t, torch.cat(visual), torch.cat(masks)) for t in text.split(batch_size)])
    retrieval_metrics(sim.cpu().numpy())
    return sim


def run(pipeline, model, paths, captions, workers, batch_size, device):
    original = pipeline == "original"
    reader = VideoReader(FRAMES, train=False, seek=not original)
    loader = DataLoader(Clips(paths, reader), batch_size=batch_size, num_workers=workers)
    with original_kmedoids_in_tower(original):
        return timed(lambda: evaluate(model, loader, captions, batch_size, device), device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "centerclip_bench_eval"),
                        help="where the test videos are written once and reused")
    parser.add_argument("--config", default="B6-4,49", help="clustering schedule 'B6-S,K'")
    parser.add_argument("--num_thread_reader", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=16, help="videos per encoder batch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]; CUDA is timed with events")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paths = make_videos(args.data_dir, args.videos)
    model = build_model(args.config, device)
    captions = torch.randint(1, 49407, (len(paths), 1, WORDS), generator=torch.Generator().manual_seed(0))
    captions[:, :, 0], captions[:, :, -1] = 49406, 49407
    info = machine(device)
    print(f"eval of {len(paths)} videos (15-60 s, 3 fps), {args.config}, {describe(info)}, median of {args.repeats}")
    print(f"{'workers':>7} {'original s':>10} {'ours s':>8} {'speedup':>8} {'videos/s ours':>13} {'same sim':>8}")
    results = dict(info, videos=len(paths), config=args.config, runs={})
    for workers in args.num_thread_reader:
        seconds = {"original": [], "ours": []}
        sims = {}
        for _ in range(args.repeats):
            for pipeline in seconds:
                sims[pipeline], ms = run(pipeline, model, paths, captions, workers, args.batch_size, device)
                seconds[pipeline].append(ms / 1e3)
        base, ours = statistics.median(seconds["original"]), statistics.median(seconds["ours"])
        same = torch.equal(sims["original"], sims["ours"])
        results["runs"][str(workers)] = dict(original_s=base, ours_s=ours, speedup=base / ours, same_sim=same)
        print(f"{workers:>7} {base:>10.1f} {ours:>8.1f} {base / ours:>7.2f}x {len(paths) / ours:>13.2f} {str(same):>8}",
              flush=True)
    write_results(results, args.json)
    return results


if __name__ == "__main__":
    main()
