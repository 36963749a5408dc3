"""Turn the command-line arguments into model objects (the only place modules/ reads `args`)."""
import logging

from modules.clip import build_clip
from modules.cluster.schedule import build_cluster_specs, chunk_size_for
from modules.cluster.token_cluster import build_token_clusters
from modules.retrieval import RetrievalModel

logger = logging.getLogger(__name__)


def cluster_specs_from_args(args, config):
    """Per-block ClusterSpec list (None where a block has no module) from the schedule flags and
    the CLIPConfig of the image tower."""
    if not args.cluster_inter:
        return [None] * config.vision_layers
    tokens_per_frame = (config.image_resolution // config.vision_patch_size) ** 2
    return build_cluster_specs(
        args.cluster_num_blocks, args.target_frames_blocks, args.max_frames, True, args.cluster_algo,
        config.vision_width, tokens_per_frame, chunk_size_for(config.vision_patch_size),
        distance=args.cluster_distance, norm_p=args.minkowski_norm_p, pre_norm=bool(args.pre_norm),
        threshold=args.cluster_threshold, iter_limit=args.cluster_iter_limit, aggregation=args.aggregation,
        spectral_graph=args.spectral_graph, spectral_sigma=args.spectral_sigma,
        spectral_knn_k=args.spectral_knn_k, spectral_spg=bool(args.spectral_spg),
        svd_correct_sign=bool(args.svd_correct_sign), cluster_embedding=bool(args.cluster_embedding),
        embed_from_clip=bool(args.cluser_embed_from_clip),
        cluster_frame_embedding=bool(args.cluster_frame_embedding))


def create_model(args, clip_state_dict):
    """CLIP from its weights (fp32; --linear_patch 3d adds conv2), token clustering in the image tower,
    the similarity head initialised from CLIP, and `logit_scale` overwritten by --temperature_new
    when it is > 1."""
    clip = build_clip(clip_state_dict, linear_patch=args.linear_patch)
    specs = cluster_specs_from_args(args, clip.config)
    clip.visual.set_block_hooks(build_token_clusters(specs, clip.visual.positional_embedding.detach()))
    if args.temperature_new > 1:
        clip.logit_scale.data.fill_(args.temperature_new)
    model = RetrievalModel(clip, sim_header=args.sim_header, cross_num_hidden_layers=args.cross_num_hidden_layers)
    model.init_heads_from_clip(clip_state_dict)
    blocks = [s.block for s in specs if s is not None]
    logger.info("token clustering (%s) in vision blocks %s", args.cluster_algo, blocks or "none")
    return model
