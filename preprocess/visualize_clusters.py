"""Draw which patches a token-clustering block keeps as medoids, for one video (the paper's figure).

    python preprocess/visualize_clusters.py --video clip.mp4 --out medoids.png \\
        --checkpoint eclip_msrvtt_63/ckpt.best.pth.tar --max_frames 12 --cluster_inter 1 \\
        --cluster_num_blocks 49 49 49 49 49 49 49 49 49 49 49 49 \\
        --target_frames_blocks 12 12 12 12 12 12 4 4 4 4 4 4 --minkowski_norm_p 1

The model flags are main.py's (``python params.py --help``), so a training command line can be
reused as it is; the tool's own flags are listed by ``--help``. Without ``--checkpoint`` the
model is CLIP from ``--pretrained_dir`` with the clustering flags; with it, its weights are
loaded (and CLIP is rebuilt from the checkpoint when ``--pretrained_dir`` lacks the file).

The video's frames are sampled and cropped as in evaluation. The PNG has one row per segment
of the chosen block, its frames left to right; patches whose tokens are medoids keep their
colours, the others are dimmed under a grey veil. A forward pre-hook captures the input of
every clustering block up to the chosen one and the block's own ``TokenCluster`` clusters it
again (the same computation as in the forward pass), so medoids of later blocks are traced
back through the earlier ones to the patches they came from.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

import params  # noqa: E402
from dataloaders.decode import read_frames  # noqa: E402
from dataloaders.transforms import frames_to_clip, resize_and_crop  # noqa: E402
from dataloaders.video_reader import BROKEN_VIDEO_ERRORS  # noqa: E402
from modules.factory import build_retrieval_model  # noqa: E402
from modules.cluster.schedule import CLUSTERING  # noqa: E402

VEIL = np.array([192, 192, 192], np.float32)  # the grey laid over dropped patches, as in the paper


def clustering_blocks(visual, block):
    """0-based indices of the k-medoids / spectral blocks up to ``block`` (1-based, None = the
    first), checked to be traceable to patches."""
    blocks = visual.transformer.resblocks
    modules = {i: b.tokencluster_inter for i, b in enumerate(blocks) if b.tokencluster_inter is not None}
    usable = [i for i, m in modules.items() if m.spec.algorithm in CLUSTERING]
    if not usable:
        found = ", ".join(sorted({m.spec.algorithm for m in modules.values()})) or "no clustering module"
        raise ValueError(f"no block clusters tokens into medoids ({found}); use --cluster_inter 1, --cluster_algo "
                         "kmediods++ or spectral, and a schedule that reduces frames or tokens")
    chosen = usable[0] if block is None else block - 1
    if chosen not in usable:
        raise ValueError(f"--block {block} has no k-medoids/spectral module; choose one of "
                         f"{', '.join(str(i + 1) for i in usable)} (1-based, as in --cluster_num_blocks)")
    chain = [i for i in usable if i <= chosen]
    if modules[chain[0]].spec.aggregation is not None and len(chain) > 1:
        raise ValueError(f"--aggregation {modules[chain[0]].spec.aggregation}: after block {chain[0] + 1} tokens "
                         f"are cluster means, not patches; choose --block {chain[0] + 1}")
    return chain


@torch.no_grad()
def medoid_patches(model, pixels, block=None):
    """Patches kept as medoids by a clustering block for one video.

    Args:
        pixels: float tensor [T, 3, S, S] (one video, normalised).
        block: 1-based block number, None for the first clustering block.
    Returns:
        (block number, int64 array [segments, K]: flat patch index t * n + p of each medoid,
        t the frame, p the patch in row-major order, n the patches per frame).
    """
    blocks = model.clip.visual.transformer.resblocks
    chain = clustering_blocks(model.clip.visual, block)
    captured = {}
    hooks = [blocks[i].register_forward_pre_hook(lambda module, inputs, i=i: captured.__setitem__(i, inputs[0]))
             for i in chain]
    try:
        model.clip.visual(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    patches = captured[chain[0]].shape[1] - 1  # no clustering before the first: every patch, no [CLS]
    origin = np.arange(pixels.shape[0] * patches).reshape(pixels.shape[0], patches)  # (T, n): t * n + p
    for i in chain:
        module = blocks[i].tokencluster_inter
        medoids = module.medoid_indices(captured[i])[0].numpy()  # (f_out, K), into the d * n' tokens
        # A segment pools d consecutive rows of the previous layout, frame-major (SPEC §3).
        origin = np.take_along_axis(origin.reshape(module.spec.frames_out, -1), medoids, axis=1)
    return chain[-1] + 1, origin


def display_frames(frames, size):
    """uint8 [T, size, size, 3]: the frames as the model sees them, before normalisation."""
    return resize_and_crop(frames, size).permute(0, 2, 3, 1).numpy()


def kept_mask(medoids, num_frames, grid):
    """bool [T, g, g]: True at the patches that are medoids (medoids: flat indices t * g² + p)."""
    kept = np.zeros(num_frames * grid * grid, bool)
    kept[medoids.ravel()] = True
    return kept.reshape(num_frames, grid, grid)


def render(frames, kept, segments, dim=170 / 255, gap=4):
    """The figure: one row per segment, its frames left to right, dropped patches dimmed.

    Args:
        frames: uint8 [T, S, S, 3].
        kept: bool [T, g, g], True where the patch is a medoid.
        segments: rows; T must be a multiple.
        dim: opacity of the grey veil over dropped patches.
        gap: white pixels between frames.
    Returns:
        uint8 array [segments * S + (segments - 1) * gap, D * S + (D - 1) * gap, 3], D = T / segments.
    """
    num_frames, size = frames.shape[:2]
    per_row, patch = num_frames // segments, size // kept.shape[-1]
    canvas = np.full((segments * size + (segments - 1) * gap, per_row * size + (per_row - 1) * gap, 3), 255, np.uint8)
    for t in range(num_frames):
        dropped = ~kept[t].repeat(patch, axis=0).repeat(patch, axis=1)  # (S, S)
        tile = frames[t].astype(np.float32)
        tile[dropped] = (1 - dim) * tile[dropped] + dim * VEIL
        row, column = divmod(t, per_row)
        top, left = row * (size + gap), column * (size + gap)
        canvas[top:top + size, left:left + size] = np.rint(tile).astype(np.uint8)
    return canvas


def save_png(image, path):
    """Write ``image`` as a PNG through a temporary file, so a crash leaves no half image."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path + ".part", format="PNG")
    os.replace(path + ".part", path)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Every other flag is main.py's: python params.py --help lists them.")
    parser.add_argument("--video", required=True, help="the video to draw")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--checkpoint", default=None, help="a trained model (ckpt.best.pth.tar)")
    parser.add_argument("--block", type=int, default=None,
                        help="1-based block whose medoids are drawn (default: the first clustering block)")
    parser.add_argument("--indices_json", default=None,
                        help="also write the medoid patches as JSON: per segment, [frame, row, column] lists")
    parser.add_argument("--dim", type=float, default=170 / 255,
                        help="opacity of the grey veil on dropped patches (default 2/3, as the paper's figure)")
    parser.add_argument("--gap", type=int, default=4,
                        help="white pixels between frames (default %(default)s)")
    return parser


def parse(argv):
    """Tool flags and main.py's flags (``--output_dir`` defaults to the PNG's folder: unused)."""
    tool, rest = build_parser().parse_known_args(argv)
    if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in rest):
        rest += ["--output_dir", os.path.dirname(os.path.abspath(tool.out))]
    return tool, params.get_args(rest)


def main(argv=None):
    tool, args = parse(sys.argv[1:] if argv is None else argv)
    if tool.checkpoint:
        args.resume = tool.checkpoint
    try:
        model = build_retrieval_model(args)[0].eval()
        config = model.clip.config
        size, patch = config.image_resolution, config.vision_patch_size
        frames, _ = read_frames(tool.video, args.max_frames, train=False)
        clip = frames_to_clip(frames, size, config.image_mean, config.image_std)
        block, medoids = medoid_patches(model, clip, tool.block)
    except (*BROKEN_VIDEO_ERRORS, ValueError) as error:  # a bad video, checkpoint, weights file or --block
        sys.exit(f"visualize_clusters: {error}")
    grid = size // patch
    save_png(render(display_frames(frames, size), kept_mask(medoids, len(frames), grid), len(medoids),
                    tool.dim, tool.gap), tool.out)
    if tool.indices_json:
        rows = [[[int(m) // grid ** 2, int(m) % grid ** 2 // grid, int(m) % grid] for m in segment]
                for segment in medoids]
        with open(tool.indices_json, "w") as f:
            json.dump({"video": tool.video, "block": block, "grid": grid, "segments": rows}, f)
    print(f"block {block}: {medoids.shape[0]} segments x {medoids.shape[1]} medoids -> {tool.out}")
    return block, medoids


if __name__ == "__main__":
    main()
