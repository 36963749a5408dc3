import json
import os
import re
import subprocess
import sys

import pytest

from params import build_parser, get_args, save_hparams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B32_SCHEDULE = ["--cluster_num_blocks"] + ["49"] * 12 + ["--target_frames_blocks"] + ["12"] * 6 + ["4"] * 6

# Every flag of the original (SPEC §8).
ORIGINAL_FLAGS = """do_pretrain do_train do_eval inference_speed_test debug data_dir lmdb_dataset save_feature_path
train_csv val_csv data_path features_path num_thread_reader epochs batch_size batch_size_val lr lr_decay coef_lr
beta1 beta2 eps wd n_display video_dim seed max_words max_frames feature_framerate margin hard_negative_rate
negative_weighting n_pair output_dir resume load_from_pretrained cross_model init_model do_lower_case optim
warmup_proportion gradient_accumulation_steps clip_grad_norm cache_dir task_type datatype use_mil sampled_use_mil
text_num_hidden_layers visual_num_hidden_layers cross_num_hidden_layers loose_type expand_msrvtt_sentences
train_frame_order eval_frame_order freeze_layer_num slice_framepos linear_patch sim_header pretrained_clip_name
pretrained_dir dist_backend world_size local_rank init_method dp multigpu gpu n_gpu use-bn-sync remote data_loaded
precision cluster_algo cluster_embedding cluser_embed_from_clip cluster_frame_embedding adaptive_cls aggregation
cluster_iter_limit cluster_distance cluster_threshold minkowski_norm_p cluster_inter cluster_num_blocks
target_frames_blocks spectral_sigma spectral_graph spectral_knn_k spectral_spg svd_correct_sign deep_cluster
cluster_inter_dim freeze_clip temperature_new time_embedding camoe_dsl pre_norm""".split()


def test_help_lists_every_original_flag():
    out = subprocess.run([sys.executable, "params.py", "--help"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    listed = set(re.findall(r"--([\w-]+)", out))
    assert set(ORIGINAL_FLAGS) - listed == set()


def test_original_defaults(tmp_path):
    args = get_args(["--output_dir", str(tmp_path)])
    assert (args.lr, args.epochs, args.batch_size, args.batch_size_val) == (1e-4, 20, 256, 3500)
    assert (args.max_words, args.max_frames, args.optim, args.sim_header) == (20, 100, "BertAdam", "meanP")
    assert (args.precision, args.cluster_algo, args.cluster_iter_limit) == ("fp32", "kmediods++", 100)
    assert args.cluster_threshold == 1e-5 and args.target_frames_blocks == [12] * 12
    assert args.aggregation is None and args.do_train == 1 and args.do_eval == 0
    assert args.pretrained_dir.endswith("models/pretrained") and args.spectral_knn_k == 1


def test_published_script_flags_parse(tmp_path):
    args = get_args(["--output_dir", str(tmp_path), "--do_train", "1", "--max_words", "32", "--max_frames", "12",
                     "--optim", "AdamW", "--lr", "5e-3", "--coef_lr", "1e-3", "--batch_size", "128",
                     "--gradient_accumulation_steps", "2", "--precision", "amp", "--cluster_inter", "1",
                     "--cluster_algo", "kmediods++", "--aggregation", "None", "--loose_type",
                     "--cluser_embed_from_clip", "1", *B32_SCHEDULE])
    assert args.cluster_num_blocks == [49] * 12 and args.target_frames_blocks == [12] * 6 + [4] * 6
    assert args.aggregation is None
    assert args.batch_size == 64  # split into micro-batches, as the original
    none = get_args(["--output_dir", str(tmp_path), "--resume", "None", "--init_model", "None",
                     "--lmdb_dataset", "None"])
    assert none.resume is None and none.init_model is None and none.lmdb_dataset is None


def run_cli(*argv):
    return subprocess.run([sys.executable, "params.py", *argv], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("argv, flag", [
    (["--do_train", "0", "--do_eval", "0"], "--do_train"),
    (["--cluster_inter", "1", "--cluster_num_blocks", "49", "49"], "--cluster_num_blocks"),
    (["--cluster_inter", "1"], "--cluster_num_blocks"),
    (["--cluster_inter", "1", "--cluster_num_blocks"] + ["49"] * 12 + ["--target_frames_blocks", "12", "4"],
     "--target_frames_blocks"),
    (["--cluster_inter", "1", "--max_frames", "12", *B32_SCHEDULE[:13], "--target_frames_blocks"]
     + ["12"] * 6 + ["5"] * 6, "--target_frames_blocks"),
    (["--cluster_inter", "1", "--max_frames", "10", *B32_SCHEDULE], "--max_frames"),
    (["--cluster_inter", "1", "--max_frames", "12", *B32_SCHEDULE[:13], "--target_frames_blocks"]
     + ["4"] * 6 + ["12"] * 6, "--target_frames_blocks"),
    (["--cluster_inter", "1", "--max_frames", "12", "--cluster_num_blocks"] + ["49"] * 6 + ["200"] * 6
     + ["--target_frames_blocks"] + ["12"] * 6 + ["4"] * 6, "--cluster_num_blocks"),  # 200 > 3 x 49 tokens
    (["--cluster_algo", "kmeans"], "--cluster_algo"),
    (["--datatype", "kinetics"], "--datatype"),
    (["--pretrained_clip_name", "RN50"], "--pretrained_clip_name"),
    (["--deep_cluster", "1"], "--deep_cluster"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    (["--batch_size", "7", "--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps"),
    (["--max_words", "1"], "--max_words"),
    (["--task_type", "caption"], "--task_type"),
    (["--aggregation", "max"], "--aggregation"),
    (["--sim_header", "maxP"], "--sim_header"),
    (["--n_display", "0"], "--n_display"),
    (["--max_words", "78"], "--max_words"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1e-4"], "--lr"),
    (["--beta1", "1.0"], "--beta1"),
    (["--beta2", "-0.1"], "--beta2"),
    (["--wd", "-0.1"], "--wd"),
    (["--num_thread_reader", "-1"], "--num_thread_reader"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 32)], "--seed"),
    (["--spectral_sigma", "0"], "--spectral_sigma"),
    (["--minkowski_norm_p", "0"], "--minkowski_norm_p"),
    (["--cluster_inter", "1", "--max_frames", "2", "--cluster_num_blocks"] + ["49"] * 6 + ["16"] * 6
     + ["--target_frames_blocks"] + ["2"] * 6 + ["4"] * 6, "--max_frames"),
])
def test_bad_combinations_fail_naming_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_:
        get_args(["--output_dir", str(tmp_path), *argv])
    stderr = capsys.readouterr().err
    assert exit_.value.code != 0
    assert flag in stderr
    assert len(stderr.splitlines()) <= 3  # a short message, not the whole usage


def test_bad_flag_fails_the_command_line_naming_it(tmp_path):
    """The same through the real command line (a new process), once."""
    result = run_cli("--output_dir", str(tmp_path), "--lr", "nan")
    assert result.returncode != 0
    assert "--lr" in result.stderr
    assert len(result.stderr.splitlines()) <= 3


def test_schedule_without_cluster_inter_warns(tmp_path, caplog):
    get_args(["--output_dir", str(tmp_path), *B32_SCHEDULE])
    assert "--cluster_inter is 0" in caplog.text
    caplog.clear()
    get_args(["--output_dir", str(tmp_path), "--cluster_inter", "1", "--max_frames", "12", *B32_SCHEDULE])
    assert "--cluster_inter is 0" not in caplog.text


def test_save_hparams_writes_every_argument(tmp_path):
    args = get_args(["--output_dir", str(tmp_path), *B32_SCHEDULE])
    save_hparams(args, str(tmp_path))
    saved = json.loads((tmp_path / "hparams_train.json").read_text())
    assert set(vars(args)) == set(saved)
    assert saved["cluster_num_blocks"] == [49] * 12 and saved["output_dir"] == str(tmp_path)


def test_parser_has_no_duplicate_destinations():
    dests = [a.dest for a in build_parser()._actions]
    assert len(dests) == len(set(dests))
