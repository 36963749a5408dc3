"""Checkpoint loading never runs code from the file; SHA-256 sidecars catch corruption and a
crash between the renames of a save loses nothing; unreadable files are named."""
import collections
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
import zipfile

import numpy as np
import pytest
import torch

from modules.checkpoint import (CheckpointError, UnsafeCheckpointError, copy_checkpoint, read_checkpoint,
                                save_checkpoint)
from modules.integrity import IntegrityError, sha256_file, sidecar_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, caplog):
    marker, path = tmp_path / "pwned", str(tmp_path / "ckpt.pth.tar")
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    message = str(err.value)
    assert path in message and "posix.system" in message and "--unsafe_load_checkpoint 1" in message
    # The opt-in runs it (so the refusal above is what kept the marker away), with a warning.
    with caplog.at_level(logging.WARNING, logger="modules.checkpoint"):
        assert read_checkpoint(path, unsafe=True)["extra"] == 0
    assert marker.exists()
    assert any(path in r.getMessage() and "full unpickling" in r.getMessage() for r in caplog.records)


def test_unsafe_opt_in_is_not_needed_for_safe_files(tmp_path, caplog):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 3, "state_dict": {"w": torch.arange(3.0)}}, path)
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint(path, unsafe=True)["epoch"] == 3
    assert not caplog.records


def test_numpy_scalars_and_dtypes_load_as_numpy(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    values = {"best_acc1": np.float64(44.1), "steps": np.int64(-7), "half": np.float16(0.5), "flag": np.bool_(True),
              "big_endian": np.dtype(">f8").type(2.5), "dtype": np.dtype("float32")}
    torch.save(values, path)
    loaded = read_checkpoint(path)
    for key, value in values.items():
        assert type(loaded[key]) is type(value) and loaded[key] == value, key


def with_renamed_global(path, old, new):
    """Rewrite a torch.save zip archive with ``old`` replaced by ``new`` in its pickle."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data.replace(old, new) if name.endswith("data.pkl") else data)


def test_checkpoint_written_under_numpy_1_loads(tmp_path):
    # numpy 1.x pickles a scalar as `numpy.core.multiarray scalar`; numpy 2.x as
    # `numpy._core.multiarray scalar`; the rest of the bytes are identical (measured, 1.26.4).
    path = str(tmp_path / "ckpt.pth.tar")
    torch.save({"best_acc1": np.float64(44.1), "state_dict": {"w": torch.ones(2)}}, path)
    with_renamed_global(path, b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    with zipfile.ZipFile(path) as archive:
        pickled, = [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
    assert b"numpy.core.multiarray\nscalar" in pickled and b"numpy._core" not in pickled
    loaded = read_checkpoint(path)
    assert loaded["best_acc1"] == np.float64(44.1) and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_non_number_numpy_scalar_is_refused(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    torch.save({"name": np.str_("x")}, path)
    with pytest.raises(UnsafeCheckpointError, match="--unsafe_load_checkpoint"):
        read_checkpoint(path)


def fake_yacs(monkeypatch):
    """yacs.config.CfgNode as yacs 0.1.8 pickles it (byte-identical pickles, measured), installed in
    sys.modules for saving only."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(),
                                  "__renamed_keys__": {}, "__new_allowed__": False})

    CfgNode.__module__, CfgNode.__qualname__, module.CfgNode = "yacs.config", "CfgNode", CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def test_xclip_checkpoint_with_yacs_config_loads_without_yacs(tmp_path, monkeypatch):
    CfgNode = fake_yacs(monkeypatch)
    config = CfgNode({"MODEL": CfgNode({"ARCH": "ViT-B/32"}), "DATA": CfgNode({"NUM_FRAMES": 8, "INPUT": (224,)})})
    path = str(tmp_path / "k400_32_8.pth")
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {}, "lr_scheduler": {"t": 3}, "max_accuracy": 80.4,
                "epoch": 29, "config": config}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    loaded = read_checkpoint(path)
    assert "yacs" not in sys.modules
    assert isinstance(loaded["config"], collections.OrderedDict)
    assert loaded["config"] == {"MODEL": {"ARCH": "ViT-B/32"}, "DATA": {"NUM_FRAMES": 8, "INPUT": (224,)}}
    assert loaded["epoch"] == 29 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_sidecar_is_sha256sum_format(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 1, "w": torch.randn(10)}, path)
    with open(sidecar_path(path)) as f:
        assert f.read() == f"{sha256_file(path)}  ckpt.pth.tar\n"
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--status", "ckpt.pth.tar.sha256"], cwd=tmp_path, check=True)


def test_zeroed_block_in_the_middle_is_detected(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 1, "state_dict": {"w": torch.randn(100_000)}}, path)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(4096))
    with pytest.raises(IntegrityError) as err:
        read_checkpoint(path)
    assert path in str(err.value) and "corrupt" in str(err.value)


def test_file_without_sidecar_loads_logged_at_info(tmp_path, caplog):
    path = str(tmp_path / "released.pth.tar")
    torch.save({"epoch": 2}, path)
    with caplog.at_level(logging.INFO, logger="modules.integrity"):
        assert read_checkpoint(path) == {"epoch": 2}
    assert any("unverified" in r.getMessage() and path in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", None])
def test_empty_or_truncated_checkpoint_names_the_file(tmp_path, content):
    path = str(tmp_path / "ckpt.pth.tar")
    if content is None:  # the first half of a real checkpoint
        buffer = io.BytesIO()
        torch.save({"w": torch.randn(1000)}, buffer)
        content = buffer.getvalue()[:2000]
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert path in str(err.value) and f"({len(content)} bytes)" in str(err.value)


def test_copy_carries_a_sidecar_and_refuses_a_corrupt_source(tmp_path):
    source, best = str(tmp_path / "ckpt.pth.tar"), str(tmp_path / "ckpt.best.pth.tar")
    save_checkpoint({"epoch": 1, "w": torch.randn(1000)}, source)
    copy_checkpoint(source, best)
    with open(sidecar_path(best)) as f:
        assert f.read() == f"{sha256_file(source)}  ckpt.best.pth.tar\n"
    assert read_checkpoint(best)["epoch"] == 1
    save_checkpoint({"epoch": 2, "w": torch.randn(1000)}, source)
    with open(source, "r+b") as f:
        f.seek(1000)
        f.write(bytes(16))
    with pytest.raises(IntegrityError, match="ckpt.pth.tar is corrupt"):
        copy_checkpoint(source, best)
    assert read_checkpoint(best)["epoch"] == 1  # the earlier best is untouched
    assert sorted(os.listdir(tmp_path)) == ["ckpt.best.pth.tar", "ckpt.best.pth.tar.sha256", "ckpt.pth.tar",
                                            "ckpt.pth.tar.sha256"]


CRASHING_SAVE = """
import os, sys
sys.path.insert(0, {repo!r})
import torch
from modules.checkpoint import save_checkpoint
renames, crash_at = [], {crash_at}
def replace(src, dst):
    renames.append(dst)
    if len(renames) == crash_at:
        os._exit(9)  # killed: no clean-up runs
    real_replace(src, dst)
real_replace, os.replace = os.replace, replace
save_checkpoint({{"epoch": 2}}, {path!r})
"""


def crash_during_save(path, crash_at):
    """Save epoch 2 over ``path`` in a child process killed at its ``crash_at``-th rename."""
    code = CRASHING_SAVE.format(repo=REPO, path=path, crash_at=crash_at)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_crash_during_a_save_loses_nothing(tmp_path, crash_at):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 1}, path)
    crash_during_save(path, crash_at)
    left = sorted(re.sub(r"\.tmp\d+$", ".tmp<pid>", name) for name in os.listdir(tmp_path))
    if crash_at == 1:  # before the checkpoint's rename: the old pair, and both temporaries
        assert left == ["ckpt.pth.tar", "ckpt.pth.tar.sha256", "ckpt.pth.tar.sha256.tmp<pid>",
                        "ckpt.pth.tar.tmp<pid>"]
    else:  # between the renames: the new checkpoint, the old sidecar, the new one pending
        assert left == ["ckpt.pth.tar", "ckpt.pth.tar.sha256", "ckpt.pth.tar.sha256.tmp<pid>"]
    assert read_checkpoint(path) == {"epoch": crash_at}
    # The next save settles what the crash left: only the new pair remains.
    save_checkpoint({"epoch": 3}, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "ckpt.pth.tar.sha256"]
    assert read_checkpoint(path) == {"epoch": 3}


def test_a_crash_between_renames_then_a_failing_save_still_loads(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 1}, path)
    crash_during_save(path, 2)

    def failing_save(obj, f):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 3}, path)
    assert read_checkpoint(path) == {"epoch": 2}  # the pending sidecar was promoted, not dropped
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar", "ckpt.pth.tar.sha256"]


def test_temporaries_of_live_processes_are_kept(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    live = tmp_path / f"ckpt.pth.tar.tmp{os.getppid()}"
    live.write_bytes(b"being written by another process")
    save_checkpoint({"epoch": 1}, path)
    assert live.exists()


def test_unreadable_sidecar_is_named(tmp_path):
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint({"epoch": 1}, path)
    with open(sidecar_path(path), "w") as f:
        f.write("not a digest\n")
    with pytest.raises(IntegrityError, match=f"{sidecar_path(path)} is not a `sha256sum` line"):
        read_checkpoint(path)
