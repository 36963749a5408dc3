"""The X-CLIP launchers in scripts/: every recipe and released-checkpoint preset, run with DRY_RUN=1,
prints a torchrun command that params.get_args accepts, with the original's numbers (model, frames,
lr, epochs, views, and the total batch split into processes x batch x accumulation); the recognition
demo's command, its Python and the order of its steps."""
import json
import os
import shlex
import stat

import pytest

import params
from tests.test_scripts import SCRIPTS, clone, first_word, launcher_value, main_argv, run_in, run_script

LABELS = os.path.join(os.path.dirname(SCRIPTS), "dataloaders", "labels")

# The original's configs/<dataset>/<recipe>.yaml: model, frames, TRAIN.BATCH_SIZE and
# TRAIN.ACCUMULATION_STEPS (per GPU; x 8 GPUs = the total batch), gradient checkpointing.
RECIPES = {
    "32_8": ("ViT-B/32", 8, 8, 4, 0),
    "32_16": ("ViT-B/32", 16, 8, 4, 0),
    "16_8": ("ViT-B/16", 8, 8, 4, 0),
    "16_16": ("ViT-B/16", 16, 4, 8, 0),
    "16_32": ("ViT-B/16", 32, 4, 8, 0),
    "14_8": ("ViT-L/14", 8, 4, 8, 0),
    "14_16_336": ("ViT-L/14@336px", 16, 1, 32, 1),
}
K400_RECIPES = ["32_8", "32_16", "16_8", "16_16", "16_32", "14_8", "14_16_336"]
K600_RECIPES = ["16_8", "16_16", "14_8"]
KINETICS = {"xclip_k400.sh": ("k400", "kinetics_400_labels.csv", K400_RECIPES, "32_8"),
            "xclip_k600.sh": ("k600", "kinetics_600_labels.csv", K600_RECIPES, "16_8")}
TRAINING = [(script, recipe) for script, (_, _, recipes, _) in KINETICS.items() for recipe in ["", *recipes]]
RELEASED = [(script, f"{dataset}_{recipe}") for script, (dataset, _, recipes, _) in KINETICS.items()
            for recipe in recipes if recipe != "16_32"]
SHORT_NAMES = {"hmdb51": "hmdb", "ucf101": "ucf"}  # in the released checkpoints' ids
FEW_SHOT = [(dataset, shots) for dataset in ("hmdb51", "ucf101") for shots in (2, 4, 8, 16)]
# The X-CLIP launchers' own variables, emptied (= unset for the scripts) so the caller's environment
# cannot change a test; run_in removes common.sh's.
CLEAN = {name: "" for name in ("DATASET", "SHOTS", "BATCH_PER_PROCESS", "NUM_CLIPS", "NUM_CROPS", "TRAIN_LIST",
                               "VAL_LIST", "ZERO_SHOT", "EPOCHS", "NUM_WORKERS")}
EIGHT_GPUS = {"NPROC": "4", "NNODES": "2", "DATA_ROOT": "/data", "MODELS_DIR": "/models"}


def dry_run(script, tmp_path, env=None, args=()):
    """(torchrun flags, parsed main.py arguments, main.py's argv) of a launcher's printed command."""
    result = run_script(script, tmp_path, {**CLEAN, **(env or {})}, args)
    assert result.returncode == 0, result.stderr
    launcher, argv = main_argv(result.stdout)
    return launcher, params.get_args(argv), argv


def assert_model(args, recipe):
    arch, frames = RECIPES[recipe][:2]
    assert (args.task_type, args.datatype) == ("recognition", "video_list")
    assert (args.pretrained_clip_name, args.max_frames) == (arch, frames)


@pytest.mark.parametrize("script,preset", TRAINING)
def test_kinetics_training_recipes(script, preset, tmp_path):
    dataset, labels, _, default = KINETICS[script]
    recipe = preset or default
    launcher, args, argv = dry_run(script, tmp_path, {"PRESET": preset, **EIGHT_GPUS})
    assert (launcher_value(launcher, "--nproc_per_node"), launcher_value(launcher, "--nnodes")) == ("4", "2")
    assert_model(args, recipe)
    batch, accumulation, checkpointing = RECIPES[recipe][2:]
    # On the original's 8 GPUs the total batch 256 splits exactly as its config file says.
    assert (args.batch_size, args.gradient_accumulation_steps) == (batch, accumulation)
    assert 8 * args.batch_size * args.gradient_accumulation_steps == 256
    assert (args.lr, args.epochs, args.use_checkpoint) == (8e-6, 30, checkpointing)
    assert (args.do_train, args.do_eval, args.num_clips, args.num_crops) == (1, 0, 1, 1)
    assert (args.train_list, args.val_list) == (f"/data/{dataset}/train.txt", f"/data/{dataset}/val.txt")
    assert args.features_path == f"/data/{dataset}/videos"
    assert args.labels_csv == os.path.join(LABELS, labels) and os.path.isfile(args.labels_csv)
    assert args.output_dir == f"/models/xclip_{dataset}_{recipe}" and args.resume is None
    assert args.precision == "amp"  # the original's apex O1


@pytest.mark.parametrize("script,preset", RELEASED)
def test_released_kinetics_checkpoints_are_evaluated_with_4_clips_x_3_crops(script, preset, tmp_path):
    _, args, argv = dry_run(script, tmp_path, {"PRESET": preset, **EIGHT_GPUS})
    assert_model(args, preset.split("_", 1)[1])
    assert (args.do_train, args.do_eval) == (0, 1)
    assert (args.num_clips, args.num_crops) == (4, 3)
    assert args.resume == f"/models/{preset}.pth"
    assert args.output_dir == f"/models/{preset}_eval"  # never beside the released file
    assert "--train_list" not in argv and "--lr" not in argv  # nothing of training


@pytest.mark.parametrize("nproc,nnodes,total,cap,batch,accumulation", [
    ("1", "1", None, None, 8, 32),     # one GPU: the config's batch, the rest accumulated
    ("8", "8", None, None, 4, 1),      # 64 processes: 4 videos each make 256
    ("1", "1", "24", "5", 4, 6),       # batch: the largest divisor of 24 that is at most 5
    ("2", "1", "64", "16", 16, 2),     # BATCH_PER_PROCESS above the config's 8 (a bigger GPU)
])
def test_total_batch_split(nproc, nnodes, total, cap, batch, accumulation, tmp_path):
    env = {"NPROC": nproc, "NNODES": nnodes, **({"TOTAL_BATCH": total} if total else {}),
           **({"BATCH_PER_PROCESS": cap} if cap else {})}
    _, args, _ = dry_run("xclip_k400.sh", tmp_path, env)
    assert (args.batch_size, args.gradient_accumulation_steps) == (batch, accumulation)
    assert int(nproc) * int(nnodes) * batch * accumulation == int(total or 256)


@pytest.mark.parametrize("script,env,message", [
    ("xclip_k400.sh", {"PRESET": "k400_16_32"}, "unknown PRESET=k400_16_32; choose a recipe"),
    ("xclip_k600.sh", {"PRESET": "32_8"}, "unknown PRESET=32_8"),
    ("xclip_k400.sh", {"NPROC": "3"}, "TOTAL_BATCH=256 is not divisible by NPROC*NNODES=3"),
    ("xclip_few_shot.sh", {"PRESET": "few_hmdb_3"}, "unknown PRESET=few_hmdb_3"),
    ("xclip_few_shot.sh", {"SHOTS": "5"}, "SHOTS=5: the original's few-shot settings are 2, 4, 8 and 16"),
    ("xclip_few_shot.sh", {"DATASET": "k400"}, "unknown DATASET=k400; choose hmdb51 or ucf101"),
    ("xclip_zero_shot.sh", {}, "nothing to evaluate: set RESUME"),
    ("xclip_zero_shot.sh", {"PRESET": "zero", "DATASET": "k700"}, "unknown DATASET=k700"),
])
def test_bad_settings_fail_with_a_message(script, env, message, tmp_path):
    result = run_script(script, tmp_path, {**CLEAN, **env})
    assert result.returncode != 0
    assert message in result.stderr
    assert "main.py" not in result.stdout


def test_released_checkpoint_is_evaluated_on_any_number_of_processes(tmp_path):
    _, args, _ = dry_run("xclip_k400.sh", tmp_path, {"PRESET": "k400_32_8", "NPROC": "3"})
    assert (args.do_train, args.num_clips) == (0, 4)  # no training batch to split, so 3 processes are fine


@pytest.mark.parametrize("dataset,shots", FEW_SHOT)
def test_few_shot_training(dataset, shots, tmp_path):
    env = {"DATASET": dataset, "SHOTS": str(shots), **EIGHT_GPUS}
    _, args, _ = dry_run("xclip_few_shot.sh", tmp_path, env, args=["--seed", "3"])
    assert_model(args, "16_32")
    assert args.shots == shots and args.seed == 3
    # configs/{hmdb51,ucf101}/16_32.yaml: lr 2e-6, 50 epochs, 4 videos per GPU x accumulation 2.
    assert (args.lr, args.epochs) == (2e-6, 50)
    assert (args.batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert (args.train_list, args.val_list) == (f"/data/{dataset}/train_split1.txt", f"/data/{dataset}/test_split1.txt")
    labels = {"hmdb51": "hmdb_51_labels.csv", "ucf101": "ucf_101_labels.csv"}[dataset]
    assert args.labels_csv == os.path.join(LABELS, labels)
    assert (args.num_clips, args.num_crops, args.do_train) == (1, 1, 1)
    assert args.output_dir == f"/models/xclip_few_{dataset}_{shots}"


def test_few_shot_total_batch_on_one_gpu(tmp_path):
    _, args, _ = dry_run("xclip_few_shot.sh", tmp_path, {"NPROC": "1"})
    assert (args.batch_size, args.gradient_accumulation_steps, args.shots) == (4, 16, 2)  # 64 per step


@pytest.mark.parametrize("dataset,shots", FEW_SHOT)
def test_released_few_shot_checkpoints(dataset, shots, tmp_path):
    preset = f"few_{SHORT_NAMES[dataset]}_{shots}"
    _, args, argv = dry_run("xclip_few_shot.sh", tmp_path, {"PRESET": preset, "DATASET": "ucf101", **EIGHT_GPUS})
    assert_model(args, "16_32")
    assert args.val_list == f"/data/{dataset}/test_split1.txt"  # the preset decides the dataset
    assert (args.do_train, args.do_eval, args.num_clips, args.num_crops) == (0, 1, 1, 1)  # single view
    assert args.resume == f"/models/{preset}.pth" and args.output_dir == f"/models/{preset}_eval"
    assert "--shots" not in argv and "--train_list" not in argv


@pytest.mark.parametrize("dataset", ["hmdb51", "ucf101", "k600"])
def test_zero_shot_released_checkpoint(dataset, tmp_path):
    _, args, argv = dry_run("xclip_zero_shot.sh", tmp_path, {"PRESET": "zero", "DATASET": dataset, **EIGHT_GPUS})
    assert_model(args, "16_32")
    assert (args.do_train, args.do_eval, args.num_clips, args.num_crops) == (0, 1, 1, 1)
    assert args.resume == "/models/zero.pth" and args.output_dir == f"/models/zero_{dataset}_eval"
    if dataset == "k600":
        lists = [f"/data/k600/zero_shot_split{k}.txt" for k in (1, 2, 3)]
        labels = [f"/data/k600/zero_shot_split{k}_labels.csv" for k in (1, 2, 3)]
    else:
        lists = [f"/data/{dataset}/test_split{k}.txt" for k in (1, 2, 3)]
        labels = [os.path.join(LABELS, {"hmdb51": "hmdb_51_labels.csv", "ucf101": "ucf_101_labels.csv"}[dataset])]
    assert (args.zero_shot_lists, args.zero_shot_labels) == (lists, labels)
    assert (args.val_list, args.labels_csv) == (lists[0], labels[0])
    assert "--train_list" not in argv


def test_zero_shot_of_your_own_model(tmp_path):
    _, args, _ = dry_run("xclip_zero_shot.sh", tmp_path, {"RESUME": "/runs/k400/ckpt.best.pth", "MODELS_DIR": "/m"})
    assert args.resume == "/runs/k400/ckpt.best.pth" and args.output_dir == "/m/xclip_zero_shot_hmdb51"
    assert len(args.zero_shot_lists) == 3 and args.do_train == 0


def test_environment_and_extra_flags(tmp_path):
    env = {"NPROC": "2", "OUTPUT_DIR": "/out", "LMDB": "/db/k400.lmdb", "FEATURES_PATH": "/videos",
           "TRAIN_LIST": "/lists/t.txt", "VAL_LIST": "/lists/v.txt", "NUM_CLIPS": "2", "NUM_CROPS": "3",
           "MASTER_PORT": "29600", "PRESET": "16_16"}
    launcher, args, _ = dry_run("xclip_k400.sh", tmp_path, env, args=["--epochs", "1", "--precision", "fp32"])
    assert launcher_value(launcher, "--master_port") == "29600"
    assert (args.output_dir, args.lmdb_dataset, args.features_path) == ("/out", "/db/k400.lmdb", "/videos")
    assert (args.train_list, args.val_list, args.num_clips, args.num_crops) == ("/lists/t.txt", "/lists/v.txt", 2, 3)
    assert (args.epochs, args.precision) == (1, "fp32")  # user flags come last and win
    assert (args.batch_size, args.gradient_accumulation_steps) == (4, 32)


@pytest.mark.parametrize("name", ["xclip_k400.sh", "xclip_k600.sh", "xclip_few_shot.sh", "xclip_zero_shot.sh"])
def test_launchers_find_their_python(name, tmp_path):
    env = {**CLEAN, "RESUME": "/ckpt.pth"}  # the zero-shot launcher needs a model
    assert first_word(clone(tmp_path / "bare"), name, tmp_path, env) == "python3"
    with_venv = clone(tmp_path / "venv", venv_python="exit 0\n")
    assert first_word(with_venv, name, tmp_path, env) == str(tmp_path / "venv" / "clone" / ".venv" / "bin" / "python")
    assert first_word(with_venv, name, tmp_path, {"PYTHON": "/opt/py/bin/python", **env}) == "/opt/py/bin/python"


def demo_commands(tmp_path, env=None, args=()):
    result = run_in(SCRIPTS, "demo_recognition.sh", tmp_path, {**CLEAN, "DRY_RUN": "1", **(env or {})}, args)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_demo_command(tmp_path):
    [words] = demo_commands(tmp_path)
    assert words[:2] == [".venv/bin/python", "main.py"]  # made by the demo if absent
    args = params.get_args(words[2:])
    assert (args.task_type, args.datatype, args.pretrained_clip_name) == ("recognition", "video_list", "demo-small")
    assert (args.do_train, args.fix_text, args.max_frames, args.precision) == (1, 1, 6, "fp32")
    assert (args.epochs, args.batch_size, args.gradient_accumulation_steps, args.lr, args.mixup) == (12, 16, 1, 3e-4, 0)
    assert (args.color_jitter, args.gray_scale, args.overwrite) == (0, 0, 1)
    root = "data/demo_recognition"
    assert (args.train_list, args.val_list, args.labels_csv) == (f"{root}/train.txt", f"{root}/val.txt",
                                                                 f"{root}/labels.csv")
    assert args.features_path == f"{root}/videos" and args.zero_shot_lists is None


def test_demo_zero_shot_variant_and_extra_arguments(tmp_path):
    """ZERO_SHOT=1 trains on the seen classes, then evaluates that run's best checkpoint on the
    held-out classes alone; extra arguments go to the training command."""
    train, test = demo_commands(tmp_path, {"ZERO_SHOT": "1", "PYTHON": "/opt/py/bin/python", "DATA_DIR": "/d"},
                                args=["--epochs", "2", "--lr", "1e-3"])
    assert train[:2] == test[:2] == ["/opt/py/bin/python", "main.py"]
    args = params.get_args(train[2:])
    assert (args.epochs, args.lr, args.do_train) == (2, 1e-3, 1)
    root = "/d/demo_recognition"
    assert (args.train_list, args.val_list, args.labels_csv) == (f"{root}/train_seen.txt", f"{root}/val_seen.txt",
                                                                 f"{root}/labels_seen.csv")
    assert args.zero_shot_lists is None and args.output_dir == "outputs/demo_recognition_zero_shot"
    args = params.get_args(test[2:])
    assert (args.do_train, args.do_eval, args.resume) == (0, 1, "outputs/demo_recognition_zero_shot/ckpt.best.pth.tar")
    assert (args.zero_shot_lists, args.zero_shot_labels) == ([f"{root}/val_unseen.txt"], [f"{root}/labels_unseen.csv"])
    assert args.output_dir == "outputs/demo_recognition_zero_shot/zero_shot"


# Stands in for Python: records its arguments; as main.py, writes the summary lines of log.txt, or
# fails when asked to.
FAKE_PYTHON = """echo "$*" >> "$CALLS"
if [[ $1 == main.py ]]; then
    [[ $* != *--fail* ]] || { echo "boom" >&2; exit 3; }
    out=$(echo "$*" | sed 's/.*--output_dir \\([^ ]*\\).*/\\1/')
    mkdir -p "$out"
    { echo "2026-01-01 INFO centerclip: x.txt: top-1 20.00 top-5 100.00 on 100 videos"
      echo "2026-01-01 INFO centerclip: last epoch 11: top-1 87.50 top-5 100.00"
      echo "2026-01-01 INFO centerclip: best epoch 9: top-1 88.75 top-5 100.00 (ckpt.best.pth.tar holds it)"
    } > "$out/log.txt"
fi
"""


@pytest.mark.parametrize("fail", [False, True])
def test_demo_generates_then_trains_then_prints_the_metrics(fail, tmp_path):
    python = tmp_path / "fake_python"
    python.write_text("#!/usr/bin/env bash\n" + FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    calls, out = tmp_path / "calls.txt", tmp_path / "out"
    env = {**CLEAN, "PYTHON": str(python), "CALLS": str(calls), "OUTPUT_DIR": str(out), "DATA_DIR": str(tmp_path / "d")}
    result = run_in(SCRIPTS, "demo_recognition.sh", tmp_path, env, args=["--fail"] if fail else [])
    lines = calls.read_text().splitlines()
    assert lines[0] == f"-m dataloaders.demo_recognition --data_dir {tmp_path / 'd'}"
    assert lines[1].startswith("main.py --task_type recognition") and len(lines) == 2
    log = (out / "launcher.log").read_text()
    assert "main.py --task_type recognition" in log.splitlines()[0]
    if fail:
        assert result.returncode == 3 and "boom" in log
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-3:] == [
            "validation (80 videos of 20 classes, chance top-1 5%):", "last epoch 11: top-1 87.50 top-5 100.00",
            "best epoch 9: top-1 88.75 top-5 100.00 (ckpt.best.pth.tar holds it)"]


def test_demo_zero_shot_evaluates_the_best_checkpoint_after_training(tmp_path):
    python = tmp_path / "fake_python"
    python.write_text("#!/usr/bin/env bash\n" + FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    calls, out = tmp_path / "calls.txt", tmp_path / "out"
    env = {**CLEAN, "PYTHON": str(python), "CALLS": str(calls), "OUTPUT_DIR": str(out), "DATA_DIR": str(tmp_path / "d"),
           "ZERO_SHOT": "1"}
    result = run_in(SCRIPTS, "demo_recognition.sh", tmp_path, env)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 3 and "--do_train 1" in lines[1] and "--train_list" in lines[1]
    assert f"--do_train 0 --do_eval 1 --resume {out}/ckpt.best.pth.tar" in lines[2]
    assert result.stdout.splitlines()[-1] == "x.txt: top-1 20.00 top-5 100.00 on 100 videos"
    assert "never trained on" in result.stdout.splitlines()[-2]
