"""The launchers in scripts/: every dataset and preset, run with DRY_RUN=1 from another folder,
prints a torchrun command whose main.py arguments params.get_args accepts; the Python the scripts
pick; failed runs that leave their error in the output folder and keep their exit status; the
preprocessing tools run as scripts from any folder."""
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys

import pytest

import params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def b6(first, later):
    """A schedule list of the paper's "B6" form: `first` in blocks 1-6, `later` in blocks 7-12."""
    return [first] * 6 + [later] * 6


# script -> {preset: (datatype, model, max_frames, target_frames_blocks, cluster_num_blocks,
#                     algorithm, lr, eval_only)}
CASES = {
    "msrvtt.sh": {
        "": ("msrvtt", "ViT-B/32", 12, b6(12, 4), [49] * 12, "kmediods++", 5e-3, False),
        "eclip_msrvtt_62": ("msrvtt", "ViT-B/32", 12, b6(12, 6), [49] * 12, "kmediods++", 5e-3, True),
        "eclip_msrvtt_63": ("msrvtt", "ViT-B/32", 12, b6(12, 4), [49] * 12, "kmediods++", 5e-3, True),
        "eclip_msrvtt_80": ("msrvtt", "ViT-B/32", 12, [12] * 7 + [4] * 5, [49] * 12, "kmediods++", 5e-3, True),
    },
    "msvd.sh": {
        "": ("msvd", "ViT-B/32", 12, b6(12, 4), [49] * 12, "kmediods++", 5e-3, False),
        "eclip_msvd_22": ("msvd", "ViT-B/32", 12, b6(12, 4), [49] * 12, "kmediods++", 5e-3, True),
    },
    "lsmdc.sh": {
        "": ("lsmdc", "ViT-B/32", 12, b6(12, 6), [49] * 12, "kmediods++", 5e-3, False),
        "eclip_new_abla_lsmdc_04": ("lsmdc", "ViT-B/32", 12, b6(12, 6), [49] * 12, "kmediods++", 5e-3, True),
        "eclip_new_abla_lsmdc_09": ("lsmdc", "ViT-B/32", 12, b6(12, 4), [49] * 12, "kmediods++", 5e-3, True),
        "eclip_new_abla_lsmdc_22": ("lsmdc", "ViT-B/32", 12, b6(12, 6), [49] * 12, "spectral", 5e-3, True),
        "eclip_new_abla_lsmdc_23": ("lsmdc", "ViT-B/32", 12, b6(12, 4), [49] * 12, "spectral", 5e-3, True),
    },
    "activitynet.sh": {
        "": ("activity", "ViT-B/32", 60, b6(60, 15), [49] * 12, "kmediods++", 1e-2, False),
        "eclip_activity_02": ("activity", "ViT-B/16", 60, b6(60, 20), b6(196, 160), "kmediods++", 1e-2, False),
        "eclip_activity_03": ("activity", "ViT-B/16", 60, b6(60, 15), b6(196, 160), "kmediods++", 1e-2, False),
        "eclip_activity_04": ("activity", "ViT-B/32", 60, [11] * 12, [55, 54, 53, 52, 51, 50, 48, 47, 46, 45, 44, 43],
                              "token_shift", 1e-2, False),
        "eclip_activity_05": ("activity", "ViT-B/16", 60, b6(60, 12), b6(196, 160), "kmediods++", 1e-2, False),
        "eclip_activity_06": ("activity", "ViT-B/32", 75, b6(75, 15), [49] * 12, "kmediods++", 1e-2, False),
        "eclip_activity_07": ("activity", "ViT-B/32", 45, b6(45, 15), [49] * 12, "kmediods++", 1e-2, False),
        "eclip_activity_08": ("activity", "ViT-B/32", 30, b6(30, 15), [49] * 12, "kmediods++", 1e-2, False),
    },
    "didemo.sh": {
        "": ("didemo", "ViT-B/32", 64, b6(64, 16), [49] * 12, "kmediods++", 1e-2, False),
    },
}
PARAMS = [(script, preset) for script, presets in CASES.items() for preset in presets]


def run_script(name, tmp_path, extra_env=None, args=()):
    """Run scripts/<name> with DRY_RUN=1 from tmp_path (not the repository) and a clean setting."""
    return run_in(SCRIPTS, name, tmp_path, {"DRY_RUN": "1", **(extra_env or {})}, args)


def run_in(scripts, name, tmp_path, extra_env=None, args=(), timeout=60):
    """Run <scripts>/<name> from tmp_path with a clean setting (none of the launchers' variables)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PRESET", "NPROC", "NNODES", "NODE_RANK", "OUTPUT_DIR", "RESUME", "LMDB", "DO_TRAIN",
                          "DO_EVAL", "TOTAL_BATCH", "DATA_ROOT", "MODELS_DIR", "PRETRAINED_DIR", "DATA_PATH",
                          "FEATURES_PATH", "MASTER_PORT", "PYTHON", "TORCHRUN", "DRY_RUN", "DATA_DIR")}
    env.update({"HOME": str(tmp_path / "home"), **(extra_env or {})})
    return subprocess.run(["bash", os.path.join(scripts, name), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def main_argv(stdout):
    """The torchrun launcher flags and main.py's arguments of a printed command."""
    words = shlex.split(stdout.strip())
    assert words[1:3] == ["-m", "torch.distributed.run"]  # torchrun, run by the project's Python
    position = next(i for i, word in enumerate(words) if word.endswith("main.py"))
    assert os.path.samefile(words[position], os.path.join(ROOT, "main.py"))
    return words[3:position], words[position + 1:]


def launcher_value(launcher, flag):
    return launcher[launcher.index(flag) + 1]


@pytest.mark.parametrize("script,preset", PARAMS)
def test_dry_run_parses(script, preset, tmp_path):
    datatype, model, frames, schedule, tokens, algorithm, lr, eval_only = CASES[script][preset]
    result = run_script(script, tmp_path, {"PRESET": preset, "NPROC": "4", "NNODES": "2",
                                           "DATA_ROOT": "/data", "MODELS_DIR": "/models"})
    assert result.returncode == 0, result.stderr
    launcher, argv = main_argv(result.stdout)
    assert launcher_value(launcher, "--nproc_per_node") == "4"
    assert launcher_value(launcher, "--nnodes") == "2"
    args = params.get_args(argv)
    assert args.datatype == datatype
    assert args.pretrained_clip_name == model
    assert args.batch_size == 128 // 8  # total batch 128 over 4 processes x 2 nodes
    assert args.max_frames == frames
    assert args.target_frames_blocks == schedule and len(args.target_frames_blocks) == 12
    assert args.cluster_num_blocks == tokens and len(args.cluster_num_blocks) == 12
    assert args.cluster_algo == algorithm and args.cluster_inter == 1
    assert args.lr == lr and args.coef_lr == 1e-3 and args.wd == 0.2 and args.optim == "AdamW"
    assert args.precision == "amp" and args.cluster_threshold == 1e-6 and args.sim_header == "meanP"
    assert args.pretrained_dir == str(tmp_path / "home" / "models" / "pretrained")
    if eval_only:
        assert (args.do_train, args.do_eval) == (0, 1)
        assert args.resume == f"/models/{preset}/ckpt.best.pth.tar"
        assert args.output_dir == f"/models/{preset}_eval"  # never over the released files
    else:
        assert (args.do_train, args.do_eval) == (1, 0)
        assert args.resume is None
        assert args.output_dir == f"/models/{preset or 'eclip_' + datatype}"
    assert args.features_path.startswith("/data/")


def test_released_lsmdc_spectral_options(tmp_path):
    result = run_script("lsmdc.sh", tmp_path, {"PRESET": "eclip_new_abla_lsmdc_22", "NPROC": "2"})
    args = params.get_args(main_argv(result.stdout)[1])
    assert (args.spectral_graph, args.spectral_sigma, args.spectral_knn_k) == ("KNN", 2.0, 1)
    assert args.batch_size == 64


def test_msrvtt_minkowski_presets(tmp_path):
    p = {}
    for preset in ("eclip_msrvtt_62", "eclip_msrvtt_63", "eclip_msrvtt_80"):
        result = run_script("msrvtt.sh", tmp_path, {"PRESET": preset})
        p[preset] = params.get_args(main_argv(result.stdout)[1]).minkowski_norm_p
    assert p == {"eclip_msrvtt_62": 1.0, "eclip_msrvtt_63": 1.0, "eclip_msrvtt_80": 2.0}


def test_environment_and_extra_flags(tmp_path):
    env = {"NPROC": "1", "OUTPUT_DIR": "/out/run", "LMDB": "/db/videos.lmdb", "DO_TRAIN": "0", "DO_EVAL": "1",
           "RESUME": "/ckpt/x.pth.tar", "TOTAL_BATCH": "32", "DATA_PATH": "/msvd", "MASTER_PORT": "29555"}
    result = run_script("msvd.sh", tmp_path, env, args=["--epochs", "1", "--n_display", "7"])
    launcher, argv = main_argv(result.stdout)
    args = params.get_args(argv)
    assert launcher_value(launcher, "--master_port") == "29555"
    assert (args.output_dir, args.lmdb_dataset, args.resume) == ("/out/run", "/db/videos.lmdb", "/ckpt/x.pth.tar")
    assert (args.do_train, args.do_eval, args.batch_size) == (0, 1, 32)
    assert (args.epochs, args.n_display) == (1, 7)  # user flags come last and win
    assert args.data_path == "/msvd/msvd_data"


def test_paths_with_spaces_survive_quoting(tmp_path):
    result = run_script("lsmdc.sh", tmp_path, {"DATA_ROOT": "/my data", "NPROC": "1"})
    args = params.get_args(main_argv(result.stdout)[1])
    assert args.data_path == "/my data/lsmdc" and args.features_path == "/my data/lsmdc/video"


@pytest.mark.parametrize("env,message", [
    ({"PRESET": "nope"}, "unknown PRESET=nope"),
    ({"NPROC": "3"}, "TOTAL_BATCH=128 is not divisible by NPROC*NNODES=3"),
])
def test_bad_settings_fail_with_a_message(env, message, tmp_path):
    result = run_script("msrvtt.sh", tmp_path, env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "main.py" not in result.stdout


def test_tensorboard(tmp_path):
    result = run_script("tensorboard.sh", tmp_path, {"PORT": "7001"}, args=["/logs/runs"])
    words = shlex.split(result.stdout)
    assert words[words.index("--logdir") + 1] == "/logs/runs"
    assert words[words.index("--port") + 1] == "7001"
    assert words[words.index("--host") + 1] == "127.0.0.1"
    result = run_script("tensorboard.sh", tmp_path, {"MODELS_DIR": "/models"}, args=[])
    words = shlex.split(result.stdout)
    assert words[words.index("--logdir") + 1] == "/models"
    assert words[words.index("--port") + 1] == "6006"


LAUNCHERS = ["msrvtt.sh", "msvd.sh", "lsmdc.sh", "activitynet.sh", "didemo.sh"]


def clone(tmp_path, venv_python=None):
    """A copy of scripts/ in a fresh folder, as in a clone; with ``venv_python`` (a bash script's
    text), also a .venv/bin/python that runs it. Returns the scripts folder."""
    scripts = tmp_path / "clone" / "scripts"
    shutil.copytree(SCRIPTS, scripts)
    if venv_python is not None:
        python = tmp_path / "clone" / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("#!/usr/bin/env bash\n" + venv_python)
        python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return str(scripts)


def first_word(scripts, name, tmp_path, env=None):
    result = run_in(scripts, name, tmp_path, {"DRY_RUN": "1", **(env or {})})
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)[0]


@pytest.mark.parametrize("name", LAUNCHERS + ["tensorboard.sh"])
def test_scripts_find_their_python(name, tmp_path):
    bare = clone(tmp_path / "bare")
    assert first_word(bare, name, tmp_path) == "python3"  # no .venv: python3 from PATH
    with_venv = clone(tmp_path / "venv", venv_python="exit 0\n")
    venv_python = str(tmp_path / "venv" / "clone" / ".venv" / "bin" / "python")
    assert first_word(with_venv, name, tmp_path) == venv_python  # the .venv, not activated
    assert first_word(with_venv, name, tmp_path, {"PYTHON": "/opt/py/bin/python"}) == "/opt/py/bin/python"


def test_demo_python_and_extra_arguments(tmp_path):
    assert first_word(SCRIPTS, "demo.sh", tmp_path) == ".venv/bin/python"  # made by the demo if absent
    result = run_in(SCRIPTS, "demo.sh", tmp_path, {"DRY_RUN": "1", "PYTHON": "/opt/py/bin/python"},
                    args=["--epochs", "2", "--lr", "1e-3"])
    words = shlex.split(result.stdout)
    assert words[:2] == ["/opt/py/bin/python", "main.py"]
    args = params.get_args(words[2:])
    assert (args.epochs, args.lr, args.datatype, args.max_frames) == (2, 1e-3, "demo", 6)


def test_torchrun_override(tmp_path):
    result = run_script("msvd.sh", tmp_path, {"TORCHRUN": "/opt/bin/torchrun"})
    assert shlex.split(result.stdout)[:2] == ["/opt/bin/torchrun", "--nnodes"]


FAILING_PYTHON = """echo "started with $*"
echo "boom: something went wrong" >&2
exit 3
"""


@pytest.mark.parametrize("node_rank,log_name", [("0", "launcher.log"), ("1", "launcher.node1.log")])
def test_failed_launch_keeps_its_status_and_output(node_rank, log_name, tmp_path):
    scripts = clone(tmp_path, venv_python=FAILING_PYTHON)
    out = tmp_path / "run"
    result = run_in(scripts, "msvd.sh", tmp_path, {"OUTPUT_DIR": str(out), "NPROC": "1", "NODE_RANK": node_rank})
    assert result.returncode == 3
    log = (out / log_name).read_text()
    assert log.startswith("# ") and "torch.distributed.run" in log.splitlines()[0]
    assert "started with -m torch.distributed.run" in log and "boom: something went wrong" in log
    assert f"failed with exit status 3; its output is in {out / log_name}" in result.stderr
    assert "boom" in result.stdout  # shown on the terminal too


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_launcher_on_a_missing_dataset_leaves_the_error_in_its_output_folder(tmp_path):
    from tests.tiny_datasets import write_tiny_clip
    write_tiny_clip(str(tmp_path / "pretrained"))
    env = {"PYTHON": sys.executable, "DATA_ROOT": str(tmp_path / "nowhere"), "MODELS_DIR": str(tmp_path / "models"),
           "PRETRAINED_DIR": str(tmp_path / "pretrained"), "NPROC": "1", "NUM_WORKERS": "0",
           "MASTER_PORT": free_port()}
    result = run_in(SCRIPTS, "msvd.sh", tmp_path, env, timeout=300)
    assert result.returncode != 0
    log = (tmp_path / "models" / "eclip_msvd" / "launcher.log").read_text()
    assert f"{tmp_path}/nowhere/msvd/msvd_data/train_list.txt does not exist" in log


def test_demo_failure_leaves_its_error_in_its_output_folder(tmp_path):
    env = {"PYTHON": sys.executable, "OUTPUT_DIR": str(tmp_path / "out"), "DATA_DIR": str(tmp_path / "data")}
    result = run_in(SCRIPTS, "demo.sh", tmp_path, env, args=["--no_such_flag"], timeout=300)
    assert result.returncode == 2  # argparse's status
    assert "unrecognized arguments: --no_such_flag" in (tmp_path / "out" / "launcher.log").read_text()


@pytest.mark.parametrize("tool", ["compress_video", "folder2lmdb", "video_paths", "download_lsmdc",
                                  "visualize_clusters"])
def test_tools_run_as_scripts_from_any_folder(tool, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "preprocess", f"{tool}.py"), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
