"""The tiny configuration shared by `make_reference.py` (which runs the original CenterCLIP) and
`tests/test_reference_centerclip.py` (which runs this project): the same CLIP weights, batch, flags
and values of the parameters that come neither from CLIP nor from the flags.

Only torch and `tests.tiny_clip` are imported here: the original's package is also called
`modules`, so the script cannot import this project's `modules`.
"""
import os

import torch

from tests.tiny_clip import make_tiny_clip_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT_DIR = os.path.join(HERE, "centerclip")
HEADS = ("meanP", "seqTransf", "tightTransf")
B, T, WORDS = 4, 4, 8  # 4 videos of 4 frames (2 per rank with two processes), captions of 8 tokens
WIDTH = 64
DROPOUT_SEED = 1234  # torch.manual_seed before each training forward (+ rank): the tight head's dropout
# Blocks 7-12 of the 12-block tower see 2 segments of 12 tokens (as tests/tiny_datasets.SCHEDULE).
SCHEDULE = ["--cluster_inter", "1", "--cluster_num_blocks"] + ["49"] * 6 + ["12"] * 6 + \
           ["--target_frames_blocks"] + ["4"] * 6 + ["2"] * 6
COMMON_FLAGS = ["--max_frames", str(T), "--max_words", str(WORDS), "--cluster_embedding", "1",
                "--cross_num_hidden_layers", "4", "--pretrained_clip_name", "ViT-B/32", "--seed", "42"]
# Gradients stored per training step: parameter name -> number of leading rows kept (None: all).
GRADIENT_ROWS = {
    "clip.logit_scale": None,
    "clip.visual.class_embedding": None,
    "clip.visual.ln_pre.weight": None,
    "clip.visual.transformer.resblocks.3.attn.in_proj_weight": 8,
    "clip.visual.transformer.resblocks.6.tokencluster_inter.cluster_embed": None,
    "clip.visual.transformer.resblocks.11.mlp.c_proj.weight": 8,
    "clip.visual.proj": 8,
    "clip.transformer.resblocks.0.attn.in_proj_weight": 8,
    "clip.text_projection": 8,
    "frame_position_embeddings.weight": T,
    "transformerClip.resblocks.0.attn.in_proj_weight": 8,
    "transformerClip.resblocks.3.mlp.c_proj.bias": None,
    "cross.embeddings.position_embeddings.weight": 1 + T // 2,
    "cross.transformer.resblocks.0.attn.in_proj_weight": 8,
    "cross.transformer.resblocks.3.ln_2.bias": None,
    "cross.pooler.dense.weight": 8,
    "cross.pooler.ln_pool.weight": None,
    "similarity_dense.weight": None,
    "similarity_dense.bias": None,
}
# A 3-D patch embedding that is not the initial one (conv1 in the middle, zeros around), so that the
# grouping of frames and the temporal padding show in the output.
CONV2_SEED = 77


def clip_state_dict():
    """Tiny OpenAI-layout CLIP: width 64 (one head), 12 vision blocks, 4 text blocks, patch 32 at 224,
    in fp16 as OpenAI ships CLIP (the original builds CLIP's Linear/Conv/attention weights in fp16
    before loading them, so fp32 weights would be rounded on its side only)."""
    return make_tiny_clip_state_dict(seed=11, layers=12, text_layers=4, dtype=torch.float16)


def flags(sim_header, *extra):
    """Flags of both programs for a head (the original's spelling; --loose_type for the loose heads)."""
    loose = [] if sim_header == "tightTransf" else ["--loose_type"]
    return COMMON_FLAGS + SCHEDULE + ["--sim_header", sim_header] + loose + list(extra)


def batch():
    """(input_ids, input_mask, segment_ids, video, video_mask) as the loaders give them:
    [B, 1, WORDS], [B, 1, WORDS], [B, 1, WORDS], [B, 1, T, 3, 224, 224], [B, 1, T]. Video 1 has two
    valid frames, a whole segment, so the original's mask rule and this project's agree."""
    g = torch.Generator().manual_seed(5)
    ids = torch.zeros(B, 1, WORDS, dtype=torch.long)
    for b in range(B):
        n = 2 + b
        ids[b, 0, 1:n] = torch.randint(1, 49000, (n - 1,), generator=g)
        ids[b, 0, 0], ids[b, 0, n] = 49406, 49407
    video = torch.randn(B, 1, T, 3, 224, 224, generator=g)
    video_mask = torch.ones(B, 1, T, dtype=torch.long)
    video_mask[1, 0, 2:] = 0
    return ids, (ids > 0).long(), torch.zeros_like(ids), video, video_mask


def rank_slice(tensors, rank, world_size):
    """The part of a batch that `rank` of `world_size` processes gets."""
    per_rank = tensors[0].shape[0] // world_size
    return tuple(t[rank * per_rank:(rank + 1) * per_rank] for t in tensors)


def new_parameter_values(named_shapes):
    """Values for the parameters of the tight head that neither CLIP nor the flags determine (the
    pooler and similarity_dense), by sorted name from one seeded generator: name -> tensor."""
    g = torch.Generator().manual_seed(31)
    values = {}
    for name, shape in sorted(named_shapes.items()):
        if name.startswith(("cross.pooler.", "similarity_dense.")):
            offset = 1.0 if name.endswith("ln_pool.weight") else 0.0
            values[name] = offset + 0.1 * torch.randn(shape, generator=g)
    return values


def conv2_weight():
    """A seeded 3-D patch weight [64, 3, 3, 32, 32] for the --linear_patch 3d comparison."""
    g = torch.Generator().manual_seed(CONV2_SEED)
    return torch.randn(WIDTH, 3, 3, 32, 32, generator=g) * (3 * 3 * 32 * 32) ** -0.5


def gradient_slices(named_grads):
    """name -> gradient, cut to GRADIENT_ROWS, for the names present."""
    return {name: grad[:rows] if rows else grad for name, grad in named_grads.items()
            if name in GRADIENT_ROWS and grad is not None for rows in [GRADIENT_ROWS[name]]}
