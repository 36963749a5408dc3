"""Turn the command-line arguments into model objects: the model of a task with its weights
(CLIP file, --init_model, --resume). Tools import model building from here, never from main.py."""
import logging
import os
import pickle

from modules.checkpoint import load_model_weights, model_state_from_checkpoint, read_checkpoint
from modules.clip import (SCRATCH_MODELS, build_clip, config_from_state_dict, load_clip_state_dict, random_clip_state_dict,
                          read_clip_state_dict, saved_clip_config)
from modules.clip_sources import PretrainedCLIP, is_converted_name, load_pretrained_clip
from modules.cluster.schedule import build_cluster_specs, chunk_size_for
from modules.cluster.token_cluster import build_token_clusters
from modules.retrieval import RetrievalModel
from modules.xclip import build_xclip, build_xclip_from_checkpoint, load_xclip_weights

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


def create_model(args, clip_state_dict, clip_config=None):
    """CLIP from its weights (fp32; --linear_patch 3d adds conv2) and `clip_config` (converted
    weights; inferred from the keys when None), token clustering in the image tower, and the
    similarity head initialised from CLIP."""
    clip = build_clip(clip_state_dict, linear_patch=args.linear_patch, config=clip_config)
    specs = cluster_specs_from_args(args, clip.config)
    clip.visual.set_block_hooks(build_token_clusters(specs, clip.visual.positional_embedding.detach()))
    model = RetrievalModel(clip, sim_header=args.sim_header, cross_num_hidden_layers=args.cross_num_hidden_layers)
    model.init_heads_from_clip(clip_state_dict)
    blocks = [s.block for s in specs if s is not None]
    logger.info("token clustering (%s) in vision blocks %s", args.cluster_algo, blocks or "none")
    return model


def set_frame_flags(args, clip_config):
    """The loaders make frames of the model's size, normalised with the statistics it was trained
    with (`make_reader` reads these three from args)."""
    args.image_resolution = clip_config.image_resolution
    args.image_mean, args.image_std = clip_config.image_mean, clip_config.image_std


def resume_checkpoint(args):
    """The --resume checkpoint (loaded safely unless --unsafe_load_checkpoint 1), or None. `latest`
    was resolved to a path (or None) at start-up."""
    return read_checkpoint(args.resume, unsafe=bool(args.unsafe_load_checkpoint)) if args.resume else None


def clip_weights(args, checkpoint):
    """CLIP's weights as a PretrainedCLIP: from --pretrained (a CLIP file, or a retrieval checkpoint's
    CLIP), else `--pretrained_clip_name` (an OpenAI file in --pretrained_dir, or open_clip / Hugging
    Face weights converted at load). When those weights are absent but a checkpoint is given, CLIP
    is rebuilt from the checkpoint's own `clip.*` weights and saved `clip_config` (its cluster tables
    are loaded with the model). Sizes trained from scratch (`demo-small`) otherwise start from
    OpenAI's random initialisation."""
    name = args.pretrained_clip_name
    if args.pretrained_clip_path:
        return pretrained_clip_weights(args.pretrained_clip_path, unsafe=bool(args.unsafe_load_checkpoint))
    if name in SCRATCH_MODELS:
        return openai_layout(random_clip_state_dict(name, seed=args.seed))
    try:
        if is_converted_name(name):
            return load_pretrained_clip(name, download=bool(args.download_clip))
        return openai_layout(load_clip_state_dict(name, args.pretrained_dir, download=bool(args.download_clip)))
    except (FileNotFoundError, ImportError) as err:
        if checkpoint is None:
            raise
        logger.warning("%s\nbuilding CLIP from the checkpoint's clip.* weights instead", err)
    return retrieval_clip_weights(checkpoint)


def openai_layout(state_dict, config=None):
    """Weights in OpenAI's layout with their config (by default inferred from the keys)."""
    return PretrainedCLIP(state_dict, config or config_from_state_dict(state_dict))


def retrieval_clip_weights(checkpoint):
    """The CLIP inside a retrieval checkpoint or weights export (its `clip.*` keys, without the
    cluster tables, and its saved `clip_config`), in OpenAI's layout."""
    state = model_state_from_checkpoint(checkpoint)
    clip = {k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.") and "tokencluster_inter" not in k}
    if "visual.conv1.weight" not in clip:
        return None
    return openai_layout(clip, saved_clip_config(checkpoint))


def pretrained_clip_weights(path, unsafe=False):
    """--pretrained: OpenAI's CLIP file (TorchScript or state dict), or a checkpoint of this project's
    retrieval task (`ckpt.best.pth.tar`, an --export_weights file), whose fine-tuned CLIP is used."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pretrained {path} does not exist")
    try:
        state = read_clip_state_dict(path)
    except pickle.UnpicklingError:  # a checkpoint holding more than tensors (read with the allow-list)
        state = read_checkpoint(path, unsafe=unsafe)
    weights = openai_layout(state) if "visual.conv1.weight" in state else retrieval_clip_weights(state)
    if weights is None:
        raise ValueError(f"--pretrained {path} holds neither CLIP weights nor a retrieval checkpoint's clip.* weights")
    return weights


def build_retrieval_model(args):
    """The retrieval model of the flags, in the original's order: CLIP's weights, then --init_model's
    (not strict: the keys that match, the others logged), then --temperature_new > 1 written into
    `logit_scale`, then --resume's weights (strict). Returns (model, the --resume checkpoint or None)."""
    checkpoint = resume_checkpoint(args)
    weights = clip_weights(args, checkpoint)
    if weights is None or weights.xclip:
        raise ValueError(f"--pretrained_clip_name {args.pretrained_clip_name} holds no CLIP for retrieval"
                         + (" (it is an X-CLIP model: use it with --task_type recognition)" if weights else ""))
    model = create_model(args, weights.state_dict, weights.config)
    if args.init_model:
        init = read_checkpoint(args.init_model, unsafe=bool(args.unsafe_load_checkpoint))
        load_model_weights(model, init, strict=False)
    if args.temperature_new > 1:
        model.clip.logit_scale.data.fill_(args.temperature_new)
    if checkpoint is not None:
        load_model_weights(model, checkpoint)
    return model, checkpoint


def build_recognition_model(args):
    """X-CLIP with the sizes and weights of --resume when given (no CLIP file needed), else built from
    CLIP's weights at the original's initialisation; then --init_model's weights. Sets
    `args.image_resolution` (the frames' side) from the model. Returns (model, checkpoint or None)."""
    checkpoint = resume_checkpoint(args)
    options = dict(drop_path_rate=args.drop_path_rate, cache_text=bool(args.fix_text))
    if checkpoint is not None:
        model = build_xclip_from_checkpoint(checkpoint, args.max_frames, **options)
    else:
        weights = clip_weights(args, None)
        if weights.xclip:  # a whole X-CLIP (Hugging Face XCLIPModel): every part from its weights
            model = build_xclip_from_checkpoint(weights.state_dict, args.max_frames, clip_config=weights.config,
                                                **options)
        else:
            model = build_xclip(weights.state_dict, args.max_frames, seed=args.seed, clip_config=weights.config,
                                **options)
    if args.init_model:
        load_xclip_weights(model, read_checkpoint(args.init_model, unsafe=bool(args.unsafe_load_checkpoint)))
    args.image_resolution = model.config.image_resolution
    configured = (args.xclip_config or {}).get("DATA.INPUT_SIZE", args.image_resolution)
    if configured != args.image_resolution:
        raise ValueError(f"DATA.INPUT_SIZE is {configured} but {args.pretrained_clip_name} takes "
                         f"{args.image_resolution}-pixel frames")
    return model, checkpoint
