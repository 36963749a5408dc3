"""X-CLIP's YAML configs and --opts as flag defaults: the original's merge order, flags win."""
import pytest

from dataloaders.video_list import LABEL_CSVS
from params import get_args

# configs/k400/32_8.yaml of the original, as shipped.
K400_32_8 = """DATA:
    ROOT: '/PATH/TO/videos'
    TRAIN_FILE: '/PATH/TO/train.txt'
    VAL_FILE: '/PATH/TO/val.txt'
    DATASET: kinetics400
    NUM_FRAMES: 8
    NUM_CLASSES: 400
    LABEL_LIST: 'labels/kinetics_400_labels.csv'
MODEL:
    ARCH: ViT-B/32
TRAIN:
    BATCH_SIZE: 8
    ACCUMULATION_STEPS: 4
"""
EVAL = ["--do_train", "0", "--do_eval", "1"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "32_8.yaml"
    path.write_text(K400_32_8)
    return str(path)


def test_config_sets_the_flags_it_maps(tmp_path, config):
    args = get_args(["--output_dir", str(tmp_path), "--config", config, *EVAL])
    assert (args.task_type, args.datatype) == ("recognition", "video_list")
    assert (args.features_path, args.train_list, args.val_list) == ("/PATH/TO/videos", "/PATH/TO/train.txt",
                                                                     "/PATH/TO/val.txt")
    # The original's labels/kinetics_400_labels.csv is shipped as dataloaders/labels/...
    assert args.labels_csv == LABEL_CSVS["kinetics400"] and args.max_frames == 8
    assert args.pretrained_clip_name == "ViT-B/32"
    # X-CLIP's batch is per process and micro-batch: not divided by the accumulation steps.
    assert (args.batch_size, args.gradient_accumulation_steps) == (8, 4)
    # Defaults of the original's config: O1 = amp, LR 8e-6, 30 epochs, weight decay 0.001, seed 1024.
    assert (args.precision, args.lr, args.epochs, args.wd, args.seed) == ("amp", 8e-6, 30, 0.001, 1024)
    assert (args.num_clips, args.num_crops, args.batch_size_val) == (1, 1, 2)
    assert args.xclip_config["DATA.NUM_CLASSES"] == 400


def test_flags_win_over_the_config_and_opts_over_the_file(tmp_path, config):
    args = get_args(["--output_dir", str(tmp_path), "--config", config, "--max_frames", "16", "--precision", "fp32",
                     "--opts", "TEST.NUM_CLIP", "4", "TEST.NUM_CROP", "3", "TRAIN.LR", "2.e-6", *EVAL])
    assert (args.max_frames, args.precision) == (16, "fp32")
    assert (args.num_clips, args.num_crops, args.lr) == (4, 3, 2e-6)
    assert args.xclip_config["TEST.NUM_CLIP"] == 4


def test_base_files_merge_first_relative_to_the_yaml(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "common.yaml").write_text("DATA:\n  NUM_FRAMES: 16\n  VAL_FILE: base.txt\n")
    child = tmp_path / "child.yaml"
    child.write_text("BASE: ['base/common.yaml']\nDATA:\n  VAL_FILE: child.txt\n  LABEL_LIST: l.csv\n")
    args = get_args(["--output_dir", str(tmp_path), "--config", str(child), *EVAL])
    assert (args.max_frames, args.val_list, args.labels_csv) == (16, "child.txt", "l.csv")


def test_only_test_selects_eval_only(tmp_path, config):
    args = get_args(["--output_dir", str(tmp_path), "--config", config, "--opts", "TEST.ONLY_TEST", "True"])
    assert (args.do_train, args.do_eval) == (0, 1)


def test_recognition_without_config_takes_xclip_defaults(tmp_path):
    args = get_args(["--output_dir", str(tmp_path), "--task_type", "recognition", "--val_list", "v.txt",
                     "--labels_csv", "l.csv", *EVAL])
    assert (args.max_frames, args.lr, args.batch_size_val, args.datatype) == (8, 8e-6, 2, "video_list")
    retrieval = get_args(["--output_dir", str(tmp_path)])
    assert (retrieval.max_frames, retrieval.lr, retrieval.xclip_config) == (100, 1e-4, None)


def failure(argv, capsys):
    """(exit status, standard error) of get_args(argv) failing, as the command line would show them."""
    with pytest.raises(SystemExit) as exit_:
        get_args(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("content, opts, message", [
    ("DATA:\n  NUM_FRAME: 8\n", [], "unknown key DATA.NUM_FRAME"),
    ("DATA:\n  NUM_FRAMES: eight\n", [], "DATA.NUM_FRAMES must be of type int"),
    ("TRAIN:\n  OPT_LEVEL: O3\n", [], "TRAIN.OPT_LEVEL"),
    ("", ["TEST.NUM_CLIPS", "4"], "unknown key TEST.NUM_CLIPS"),
    ("", ["TEST.NUM_CLIP"], "KEY VALUE pairs"),
    ("DATA:\n  VAL_FILE: v.txt\n  LABEL_LIST: l.csv\n", ["TEST.NUM_CROP", "2"], "--num_crops"),
])
def test_bad_configs_fail_naming_the_key(tmp_path, capsys, content, opts, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    status, stderr = failure(["--output_dir", str(tmp_path), "--config", str(path), *EVAL,
                              *(["--opts", *opts] if opts else [])], capsys)
    assert status == 2
    assert message in stderr
    assert len(stderr.splitlines()) <= 3


def test_recognition_flags_are_checked(tmp_path, capsys):
    status, stderr = failure(["--output_dir", str(tmp_path), "--task_type", "recognition", *EVAL], capsys)
    assert status == 2 and "--val_list" in stderr
    status, stderr = failure(["--output_dir", str(tmp_path), "--datatype", "video_list"], capsys)
    assert status == 2 and "--datatype video_list is not a retrieval dataset" in stderr


def test_the_originals_command_line_maps_over(tmp_path, config):
    """X-CLIP's README test command, with its training flags added."""
    args = get_args(["-cfg", config, "--output", str(tmp_path), "--only_test", "--resume", "k400_32_8.pth",
                     "--opts", "TEST.NUM_CLIP", "4", "TEST.NUM_CROP", "3", "--batch-size", "4",
                     "--accumulation-steps", "2", "--pretrained", "ViT-B-32.pt"])
    assert (args.output_dir, args.do_train, args.do_eval, args.resume) == (str(tmp_path), 0, 1, "k400_32_8.pth")
    assert (args.num_clips, args.num_crops, args.batch_size, args.gradient_accumulation_steps) == (4, 3, 4, 2)
    assert args.pretrained_clip_path == "ViT-B-32.pt"


def test_an_existing_labels_folder_wins_over_the_shipped_lists(tmp_path, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "kinetics_400_labels.csv").write_text("id,name\n0,mine\n")
    args = get_args(["--output_dir", str(tmp_path), "--config", config, *EVAL])
    assert args.labels_csv == "labels/kinetics_400_labels.csv"
