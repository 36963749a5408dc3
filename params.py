"""Command line of CenterCLIP: every flag of the original, with its default, plus start-up checks.

Flag names (misspellings such as `--cluser_embed_from_clip` included) are part of the interface:
users' scripts pass them. `python params.py --help` lists them all.
"""
import argparse
import json
import logging
import os
import sys
import time

from dataloaders import DATALOADERS, RECOGNITION_EVAL_LOADERS
from modules.checkpoint import read_checkpoint_field
from modules.clip import LINEAR_PATCHES, MODEL_CONFIGS, clip_config_from_dict
from modules.clip_sources import describe_pretrained_clip, is_converted_name
from modules.cluster.distance import DISTANCES
from modules.cluster.schedule import ALGORITHMS
from modules.cluster.spectral import GRAPHS
from modules.factory import cluster_specs_from_args
from modules.optim import NEW_ADDED_MODULES, OPTIMIZERS
from modules.precision import PRECISIONS
from modules.retrieval import SIM_HEADERS
from modules.tasks import TASK_TYPES
from modules.run_settings import adopt_checkpoint_flags, checkpoint_source, config_defaults, explicit_dests, pre_parse

# --task_type -> its --datatype names.
DATATYPES = {"retrieval": tuple(DATALOADERS), "recognition": tuple(RECOGNITION_EVAL_LOADERS)}


def add_switch(parser, name, help):
    parser.add_argument(name, action="store_true", default=False, help=help)


def optional_str(value):
    """argparse type: the string `None` (which the original's scripts pass) means unset."""
    return None if value == "None" else value


def add_data_args(parser):
    parser.add_argument("--data_dir", type=str, default="/cache/dataset", help="root of all datasets")
    parser.add_argument("--lmdb_dataset", type=optional_str, default=None,
                        help="LMDB of the videos (key = file base name)")
    parser.add_argument("--save_feature_path", type=optional_str, default=None,
                        help="retrieval: write the text and video features of the evaluation into this folder "
                             "(.npy, with the captions and video paths as .json)")
    parser.add_argument("--train_csv", type=str, default="data/.train.csv", help="MSR-VTT training split csv")
    parser.add_argument("--val_csv", type=str, default="data/.val.csv", help="MSR-VTT test csv (JSFusion 1k-A)")
    parser.add_argument("--data_path", type=str, default="data/caption.pickle", help="annotation file or folder")
    parser.add_argument("--features_path", type=str, default="data/videos_feature.pickle", help="video folder")
    parser.add_argument("--num_thread_reader", type=int, default=1, help="data-loader workers per process")
    parser.add_argument("--datatype", type=str, default="msrvtt",
                        help=f"retrieval dataset, one of {', '.join(DATATYPES['retrieval'])}; "
                             f"recognition: {', '.join(DATATYPES['recognition'])}")
    parser.add_argument("--max_words", type=int, default=20, help="caption length in tokens, start/end included")
    parser.add_argument("--max_frames", type=int, default=100, help="frames sampled per video (T)")
    parser.add_argument("--feature_framerate", type=int, default=1, help="accepted; videos are pre-compressed")
    parser.add_argument("--slice_framepos", type=int, default=0, choices=[0, 1, 2],
                        help="accepted; frames are sampled uniformly (eval) or TSN-style (train)")
    parser.add_argument("--train_frame_order", type=int, default=0, choices=[0, 1, 2],
                        help="0 ordinary, 1 reverse, 2 random frame order in training")
    parser.add_argument("--eval_frame_order", type=int, default=0, choices=[0, 1, 2],
                        help="0 ordinary, 1 reverse, 2 random frame order in evaluation")
    add_switch(parser, "--expand_msrvtt_sentences", "MSR-VTT: train on every (video, caption) pair")
    parser.add_argument("--video_dim", type=int, default=1024, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--n_pair", type=int, default=1, help="unused (CLIP4Clip legacy)")


def add_optim_args(parser):
    parser.add_argument("--epochs", type=int, default=20, help="number of training epochs")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=256, help="training batch size per process")
    parser.add_argument("--batch_size_val", type=int, default=3500, help="evaluation batch size")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of new modules")
    parser.add_argument("--lr_decay", type=float, default=0.9, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--coef_lr", type=float, default=1.0, help="CLIP parameters use lr * coef_lr")
    parser.add_argument("--beta1", type=float, default=0.9, help="Adam beta 1")
    parser.add_argument("--beta2", type=float, default=0.98, help="Adam beta 2")
    parser.add_argument("--eps", type=float, default=1e-6, help="Adam epsilon")
    parser.add_argument("--wd", type=float, default=0.2, help="weight decay")
    parser.add_argument("--optim", type=str, default="BertAdam", choices=OPTIMIZERS, help="optimizer")
    parser.add_argument("--warmup_proportion", type=float, default=0.1, help="share of steps with linear warm-up")
    parser.add_argument("--gradient_accumulation_steps", "--accumulation-steps", type=int, default=1,
                        help="micro-steps per optimizer step; --batch_size is divided by it")
    parser.add_argument("--clip_grad_norm", type=float, default=1.0, help="max global gradient norm")
    parser.add_argument("--freeze_layer_num", type=int, default=0, help="freeze CLIP blocks below this; -1 none")
    parser.add_argument("--freeze_clip", type=int, default=0, help="freeze the whole CLIP backbone")
    parser.add_argument("--temperature_new", type=float, default=1.0, help="if > 1, overwrite logit_scale with it")
    parser.add_argument("--precision", type=str, default="fp32", choices=PRECISIONS,
                        help="amp = autocast + grad scaler, fp16 = half weights, fp32")
    parser.add_argument("--margin", type=float, default=0.1, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--hard_negative_rate", type=float, default=0.5, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--negative_weighting", type=int, default=1, help="unused (CLIP4Clip legacy)")
    add_switch(parser, "--use_mil", "unused (CLIP4Clip legacy)")
    add_switch(parser, "--sampled_use_mil", "unused (CLIP4Clip legacy)")


def add_model_args(parser):
    parser.add_argument("--pretrained_clip_name", type=str, default="ViT-B/32",
                        help=f"CLIP weights: one of {', '.join(MODEL_CONFIGS)} (OpenAI's), "
                             "open_clip:MODEL/TAG, open_clip:local-dir:FOLDER, hf:ORG/NAME or hf:FOLDER")
    parser.add_argument("--pretrained", dest="pretrained_clip_path", type=optional_str, default=None,
                        help="a CLIP weights file to use instead of <pretrained_dir>/<name>.pt (X-CLIP's flag)")
    parser.add_argument("--pretrained_dir", type=str, default=os.path.expanduser("~/models/pretrained"),
                        help="folder holding ViT-B-32.pt etc.")
    parser.add_argument("--download_clip", type=int, default=0,
                        help="download missing CLIP weights: OpenAI's into --pretrained_dir (SHA-256 checked), "
                             "open_clip / Hugging Face ones into the libraries' caches")
    parser.add_argument("--sim_header", type=str, default="meanP", choices=SIM_HEADERS, help="similarity head")
    parser.add_argument("--cross_num_hidden_layers", type=int, default=4, help="blocks of the seqTransf head")
    parser.add_argument("--text_num_hidden_layers", type=int, default=12, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--visual_num_hidden_layers", type=int, default=12, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--cross_model", type=str, default="cross-base", help="unused (CLIP4Clip legacy)")
    parser.add_argument("--linear_patch", type=str, default="2d", choices=LINEAR_PATCHES,
                        help="patch embedding: 2d = conv1 on each frame; 3d = conv2 over 3 consecutive frames "
                             "(stride 1, zero-padded), initialised from conv1 as CLIP4Clip; conv2 always trains")
    add_switch(parser, "--loose_type", "loose similarity (meanP/seqLSTM/seqTransf); tightTransf unsets it")
    add_switch(parser, "--do_lower_case", "unused; CLIP's tokenizer lower-cases")
    parser.add_argument("--init_model", type=optional_str, default=None,
                        help="initialise the whole model from this file")
    parser.add_argument("--camoe_dsl", type=int, default=0, help="DSL re-normalisation of similarities at eval")
    parser.add_argument("--time_embedding", type=int, default=0, help="accepted; no effect (as the original)")


def add_cluster_args(parser):
    parser.add_argument("--cluster_algo", type=str, default="kmediods++", choices=ALGORITHMS,
                        help="token clustering algorithm")
    parser.add_argument("--cluster_inter", type=int, default=0, help="cluster tokens inside the image tower")
    parser.add_argument("--cluster_num_blocks", type=int, nargs="+", default=None,
                        help="tokens kept per segment, one value per vision block")
    parser.add_argument("--target_frames_blocks", type=int, nargs="+", default=[12] * 12,
                        help="segments per video, one value per vision block")
    parser.add_argument("--cluster_embedding", type=int, default=0, help="learnable embedding of cluster slots")
    parser.add_argument("--cluser_embed_from_clip", type=int, default=1,
                        help="initialise the cluster embedding from CLIP's positional embedding")
    parser.add_argument("--cluster_frame_embedding", type=int, default=0,
                        help="create the (unused) frame embedding of the original, for its checkpoints")
    parser.add_argument("--adaptive_cls", type=int, default=0, help="accepted; no effect (as the original)")
    parser.add_argument("--aggregation", type=optional_str, default=None, choices=["mean", None],
                        help="None keeps medoid tokens, mean averages each cluster")
    parser.add_argument("--cluster_iter_limit", type=int, default=100, help="k-medoids iteration limit")
    parser.add_argument("--cluster_distance", type=str, default="euclidean", choices=DISTANCES,
                        help="clustering distance")
    parser.add_argument("--cluster_threshold", type=float, default=1e-5, help="k-medoids stop threshold")
    parser.add_argument("--minkowski_norm_p", type=float, default=2.0, help="p of the Minkowski distance")
    parser.add_argument("--pre_norm", type=int, default=0, help="L2-normalise tokens before clustering")
    parser.add_argument("--spectral_sigma", type=float, default=2.0, help="heat-kernel sigma")
    parser.add_argument("--spectral_graph", type=str, default="HeatKernel", choices=GRAPHS,
                        help="spectral affinity graph")
    parser.add_argument("--spectral_knn_k", type=int, default=1, help="KNN graph k; below 5 = automatic")
    parser.add_argument("--spectral_spg", type=int, default=0, help="spatio-temporal mask on the graph")
    parser.add_argument("--svd_correct_sign", type=int, default=1, help="Bro's SVD sign correction")
    parser.add_argument("--deep_cluster", type=int, default=0, help="unpublished experiment; rejected")
    parser.add_argument("--cluster_inter_dim", type=int, default=256, help="unused (deep_cluster only)")


def add_run_args(parser):
    parser.add_argument("--do_pretrain", action="store_true", default=False, help="unused (CLIP4Clip legacy)")
    parser.add_argument("--do_train", type=int, default=1, help="train")
    parser.add_argument("--do_eval", type=int, default=0, help="evaluate on the test split")
    parser.add_argument("--inference_speed_test", type=int, default=0, help="time test-set encoding and stop")
    parser.add_argument("--allow_blank_videos", type=int, default=0,
                        help="evaluate even when more than half the test videos cannot be read")
    parser.add_argument("--debug", action="store_true", default=False, help="log at DEBUG level")
    parser.add_argument("--output_dir", type=str, required=True, help="logs, checkpoints, metrics go here")
    parser.add_argument("--resume", type=optional_str, default=None, help="checkpoint to resume from, or `latest`")
    parser.add_argument("--unsafe_load_checkpoint", type=int, default=0,
                        help="load a checkpoint that the safe loader refuses (--resume, --init_model) with full "
                             "unpickling; only for files you trust: it can run code")
    parser.add_argument("--export_weights", type=optional_str, default=None,
                        help="write the model's weights (after --resume / --init_model) to this file, without "
                             "optimizer state, then stop")
    parser.add_argument("--export_fp16", type=int, default=0, help="with --export_weights: store fp16 weights")
    parser.add_argument("--overwrite", type=int, default=0,
                        help="train into an --output_dir that holds another run, removing its checkpoints and logs")
    parser.add_argument("--load_from_pretrained", type=int, default=0,
                        help="with --resume: load only the weights, not optimizer/epoch")
    parser.add_argument("--n_display", type=int, default=100, help="log every n steps")
    parser.add_argument("--seed", type=int, default=42, help="random seed (rank is added)")
    parser.add_argument("--cache_dir", type=str, default="", help="unused (CLIP4Clip legacy)")
    parser.add_argument("--task_type", type=str, default="retrieval", choices=TASK_TYPES,
                        help="retrieval (CenterCLIP) or recognition (X-CLIP)")


def add_distributed_args(parser):
    parser.add_argument("--dist_backend", type=str, default="nccl", help="nccl on CUDA; gloo is used on CPU")
    parser.add_argument("--dist_timeout", type=float, default=30.0,
                        help="minutes a process waits for the others (a frozen rank stops the run after this)")
    parser.add_argument("--world_size", type=int, default=1, help="set by torchrun")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help="set by the launcher")
    parser.add_argument("--init_method", type=str, default="tcp://127.0.0.1:6101",
                        help="unused; torchrun's env:// rendezvous is used")
    parser.add_argument("--dp", action="store_true", default=False, help="unused; DDP only")
    parser.add_argument("--multigpu", type=lambda s: [int(a) for a in s.split(",")], default=None, help="unused")
    parser.add_argument("--gpu", type=int, default=None, help="unused; torchrun picks the device")
    parser.add_argument("--n_gpu", type=int, default=1, help="set at start-up")
    parser.add_argument("--use-bn-sync", action="store_true", default=False, help="unused (no batch norm)")
    parser.add_argument("--remote", type=int, default=0, help="unused")
    parser.add_argument("--data_loaded", type=int, default=0, help="unused")


def add_recognition_args(parser):
    group = parser.add_argument_group("video recognition (X-CLIP, --task_type recognition)")
    group.add_argument("--config", "-cfg", type=str, default=None,
                       help="defaults for the run: an X-CLIP YAML config (e.g. configs/k400/32_8.yaml; implies "
                            "--task_type recognition) or a hparams_train.json; flags given here win")
    group.add_argument("--only_test", action="store_true", help="X-CLIP's flag: --do_train 0 --do_eval 1")
    group.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE",
                       help="override config keys, e.g. --opts TEST.NUM_CLIP 4 TEST.NUM_CROP 3")
    group.add_argument("--train_list", type=str, default=None, help="training list file: `relative/path label`")
    group.add_argument("--val_list", type=str, default=None, help="validation list file: `relative/path label`")
    group.add_argument("--labels_csv", type=str, default=None,
                       help="class names, a CSV with header id,name (class index = row order)")
    group.add_argument("--num_clips", type=int, default=1, help="clips per video at evaluation (views)")
    group.add_argument("--num_crops", type=int, default=1, choices=[1, 3], help="crops per clip at evaluation")
    group.add_argument("--fix_text", type=int, default=1,
                       help="freeze the text tower and encode the class names once (MODEL.FIX_TEXT)")
    group.add_argument("--drop_path_rate", type=float, default=0.0, help="drop path of the last vision block")
    group.add_argument("--warmup_epochs", type=float, default=5, help="epochs of linear lr warm-up")
    group.add_argument("--label_smooth", type=float, default=0.1, help="label smoothing (AUG.LABEL_SMOOTH)")
    group.add_argument("--mixup", type=float, default=0.8, help="mixup alpha; 0 turns mixup/cutmix off")
    group.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha")
    group.add_argument("--mixup_switch_prob", type=float, default=0.5, help="chance of cutmix instead of mixup")
    group.add_argument("--color_jitter", type=float, default=0.8, help="chance of colour jitter per video")
    group.add_argument("--gray_scale", type=float, default=0.2, help="chance of grayscale per video")
    group.add_argument("--use_checkpoint", type=int, default=0, help="gradient checkpointing of the vision blocks")
    group.add_argument("--save_freq", type=int, default=0,
                       help="also keep ckpt_epoch_<e>.pth.tar every n epochs and at the last (0: none; X-CLIP's "
                            "SAVE_FREQ, 1 for recognition runs)")
    group.add_argument("--shots", type=int, default=0,
                       help="few-shot: train on this many videos per class, drawn with --seed (0 = all)")
    group.add_argument("--zero_shot_lists", nargs="+", default=None,
                       help="zero-shot: evaluate on each of these list files (with --zero_shot_labels)")
    group.add_argument("--zero_shot_labels", nargs="+", default=None,
                       help="zero-shot: the labels CSV of each --zero_shot_lists file (one, or one per list)")


def build_parser():
    parser = argparse.ArgumentParser(description="CLIP video models: text-video retrieval with token clustering "
                                                 "(CenterCLIP) and video recognition (X-CLIP)",
                                     usage="%(prog)s --output_dir DIR [flags]  (--help lists every flag)")
    for add in (add_run_args, add_data_args, add_optim_args, add_model_args, add_cluster_args,
                add_distributed_args, add_recognition_args):
        add(parser)
    return parser


def clip_architecture(args):
    """The CLIPConfig of --pretrained_clip_name for the start-up checks: OpenAI's sizes, or those of
    the open_clip / Hugging Face config (read without the weights), or, when that config is not on
    this machine, the `clip_config` saved in the checkpoint the run loads."""
    if not is_converted_name(args.pretrained_clip_name):
        return MODEL_CONFIGS[args.pretrained_clip_name]
    try:
        return describe_pretrained_clip(args.pretrained_clip_name, download=bool(args.download_clip))
    except (FileNotFoundError, ImportError):
        source = checkpoint_source(args)
        saved = clip_config_from_dict(read_checkpoint_field(source, "clip_config")) if source else None
        if saved is None:
            raise
        return saved


def check_schedule(args, config):
    """The clustering schedule: one entry per vision block of the chosen CLIP (`config`), and
    everything `build_cluster_specs` checks (frames that divide, K within the tokens available, ...)."""
    num_blocks = config.vision_layers
    if args.cluster_num_blocks is None:
        raise ValueError("--cluster_inter 1 needs --cluster_num_blocks (tokens per segment for each of the "
                         f"{num_blocks} blocks, e.g. --cluster_num_blocks {' '.join(['49'] * num_blocks)})")
    for flag in ("cluster_num_blocks", "target_frames_blocks"):
        values = getattr(args, flag)
        if len(values) != num_blocks:
            raise ValueError(f"--{flag} has {len(values)} values but {args.pretrained_clip_name} has "
                             f"{num_blocks} blocks: give one value per block")
        if min(values) < 1:
            raise ValueError(f"--{flag} values must be positive, got {values}")
    if max(args.target_frames_blocks) > args.max_frames:
        raise ValueError(f"--target_frames_blocks asks for {max(args.target_frames_blocks)} segments but "
                         f"--max_frames is {args.max_frames}: a video cannot have more segments than frames")
    cluster_specs_from_args(args, config)


def check_ranges(args, config):
    """Numbers that would fail late or train silently wrong: lr, betas, weight decay, workers, seed,
    logging interval, clustering constants, --max_words within the context of CLIP (`config`)."""
    checks = (
        ("lr", args.lr > 0, "a positive number"),  # NaN fails every comparison
        ("beta1", 0 <= args.beta1 < 1, "in [0, 1)"),
        ("beta2", 0 <= args.beta2 < 1, "in [0, 1)"),
        ("eps", args.eps > 0, "a positive number"),
        ("wd", args.wd >= 0, ">= 0"),
        ("num_thread_reader", args.num_thread_reader >= 0, ">= 0"),
        ("n_display", args.n_display >= 1, ">= 1 (log every n optimizer steps)"),
        ("seed", 0 <= args.seed < 2 ** 32, "in [0, 2**32) (numpy's seed range)"),
        ("spectral_sigma", args.spectral_sigma > 0, "a positive number"),
        ("minkowski_norm_p", args.minkowski_norm_p > 0, "a positive number"),
        ("clip_grad_norm", args.clip_grad_norm >= 0, ">= 0 (0 disables clipping)"),
        ("dist_timeout", args.dist_timeout > 0, "a positive number of minutes"),
        ("save_freq", args.save_freq >= 0, ">= 0 (0 keeps no per-epoch copies)"),
    )
    for flag, ok, expected in checks:
        if not ok:
            raise ValueError(f"--{flag} must be {expected}, got {getattr(args, flag)}")
    context_length = config.context_length
    if not 2 <= args.max_words <= context_length:
        raise ValueError(f"--max_words {args.max_words}: needs room for the start and end tokens (>= 2) and at "
                         f"most CLIP's context length ({context_length})")


def check_args(args):
    """Raise ValueError naming the flag and the fix for every combination that cannot run."""
    if not args.do_train and not args.do_eval and not args.export_weights:
        raise ValueError("--do_train 0 and --do_eval 0: nothing to do; pass --do_train 1, --do_eval 1 or "
                         "--export_weights FILE")
    datatypes = DATATYPES[args.task_type]
    if args.datatype not in datatypes:
        raise ValueError(f"--datatype {args.datatype} is not a {args.task_type} dataset; choose one of "
                         f"{', '.join(datatypes)}")
    if args.pretrained_clip_name not in MODEL_CONFIGS and not is_converted_name(args.pretrained_clip_name):
        raise ValueError(f"--pretrained_clip_name {args.pretrained_clip_name} is unknown; choose one of "
                         f"{', '.join(MODEL_CONFIGS)}, open_clip:MODEL/TAG, open_clip:local-dir:FOLDER or "
                         "hf:ORG/NAME / hf:FOLDER")
    if args.deep_cluster:
        raise ValueError("--deep_cluster 1 selects an unpublished experiment of the original that is not "
                         "implemented; use --cluster_inter 1 with --cluster_algo instead")
    if args.gradient_accumulation_steps < 1:
        raise ValueError(f"--gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}")
    if args.task_type == "retrieval" and args.batch_size % args.gradient_accumulation_steps != 0:
        raise ValueError(f"--batch_size {args.batch_size} is not divisible by --gradient_accumulation_steps "
                         f"{args.gradient_accumulation_steps}")
    for flag in ("max_frames", "batch_size", "batch_size_val", "epochs"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    config = clip_architecture(args)  # read once: for open_clip / Hugging Face names, from the library's config
    check_ranges(args, config)
    if args.cluster_inter:
        check_schedule(args, config)
    if args.task_type == "recognition":
        check_recognition(args)


def check_recognition(args):
    """X-CLIP runs: a list file and its labels CSV for what the run does, no retrieval options."""
    needed = ["train_list", "labels_csv"] if args.do_train else []
    if args.do_eval or args.do_train:
        needed += [] if args.zero_shot_lists else ["val_list", "labels_csv"]
    for flag in dict.fromkeys(needed):
        if not getattr(args, flag):
            raise ValueError(f"--task_type recognition needs --{flag} (or its key in --config)")
    if args.num_clips < 1:
        raise ValueError(f"--num_clips must be >= 1, got {args.num_clips}")
    if args.num_crops not in (1, 3):
        raise ValueError(f"--num_crops must be 1 or 3 (X-CLIP's one centre crop or three crops), got {args.num_crops}")
    if args.do_train and args.precision == "fp16":
        raise ValueError("--precision fp16 does not train X-CLIP (the original's O2 keeps fp32 master weights); "
                         "use --precision amp (its O1) or fp32 (O0)")
    if args.shots < 0 or not 0 <= args.label_smooth < 1 or args.drop_path_rate < 0:
        raise ValueError("--shots must be >= 0, --label_smooth in [0, 1) and --drop_path_rate >= 0")
    for flag in ("cluster_inter", "inference_speed_test", "save_feature_path"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} is a retrieval option; X-CLIP recognition does not take it")


def warn_unused_schedule(args):
    if not args.cluster_inter and args.cluster_num_blocks is not None:
        logging.getLogger("centerclip").warning(
            "--cluster_num_blocks is given but --cluster_inter is 0: no token clustering runs; pass "
            "--cluster_inter 1 to use the schedule")


def get_args(argv=None):
    """Parse `argv` (default: sys.argv[1:]), check it, and normalise the original's conventions.

    A bad combination exits with status 2 and a message naming the flag (argparse's `error`).
    """
    parser = build_parser()
    try:
        defaults, from_config = config_defaults(argv, {action.dest for action in parser._actions})
        parser.set_defaults(**{"xclip_config": None, **defaults})
        args = parser.parse_args(argv)
        if args.only_test:
            args.do_train, args.do_eval = 0, 1
        args.startup_notes = adopt_checkpoint_flags(args, explicit_dests(parser, argv) | from_config)
        check_args(args)
    except ValueError as err:
        record_startup_error(argv, str(err))
        parser.error(str(err))
    warn_unused_schedule(args)
    if args.sim_header == "tightTransf":
        args.loose_type = False
    if args.task_type == "retrieval":
        # As the original: --batch_size is the batch of one optimizer step, split into micro-batches.
        args.batch_size = args.batch_size // args.gradient_accumulation_steps
    args.log_level = logging.DEBUG if args.debug else logging.INFO
    args.new_added_modules = list(NEW_ADDED_MODULES)
    return args


def record_startup_error(argv, message):
    """A run that stops on a bad flag leaves its reason in <output_dir>/log.txt too, when the
    command line names an output folder."""
    output_dir = pre_parse(sys.argv[1:] if argv is None else argv).output_dir
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "log.txt"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR params: {message}\n")


def save_hparams(args, directory, name="hparams_train.json"):
    """Write every argument to `<directory>/<name>`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w") as f:
        json.dump(vars(args), f, indent=4, sort_keys=True, default=str)


if __name__ == "__main__":
    print(json.dumps(vars(get_args(sys.argv[1:])), indent=2, sort_keys=True, default=str))
