"""Recognition list files, label CSVs, LMDB videos and broken videos (XCLIP_SPEC §3.1, §3.6)."""
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from dataloaders import RECOGNITION_EVAL_LOADERS
from dataloaders.annotations import AnnotationError
from dataloaders.video_list import (LABEL_CSVS, LabelledVideo, build_recognition_eval_loader,
                                    read_class_names, read_video_list)
from preprocess.folder2lmdb import folder_to_lmdb
from tests import video_factory as vf

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")
BROKEN = {"empty.mp4": vf.write_empty_file, "corrupt.mp4": vf.write_corrupt_file,
          "truncated.mp4": vf.write_truncated_video}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """The committed videos plus broken ones under ``videos/``, an LMDB of them, a labels CSV."""
    root = tmp_path_factory.mktemp("video_list")
    shutil.copytree(os.path.join(REFERENCE_DIR, "videos"), root / "videos")
    for name, writer in BROKEN.items():
        writer(str(root / "videos" / name))
    folder_to_lmdb(str(root / "videos"), str(root / "videos.lmdb"), progress=False)
    shutil.copy(os.path.join(REFERENCE_DIR, "labels.csv"), root / "labels.csv")
    return root


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def loader_of(root, list_path, lmdb=False, num_crops=1, batch_size=2, num_workers=0):
    return RECOGNITION_EVAL_LOADERS["video_list"](
        list_path=list_path, root=str(root), labels_csv=str(root / "labels.csv"),
        lmdb_path=str(root / "videos.lmdb") if lmdb else None, num_frames=4, num_clips=2,
        num_crops=num_crops, input_size=64, batch_size=batch_size, num_workers=num_workers)


def test_class_names_follow_row_order_exactly(tmp_path):
    path = write(tmp_path / "labels.csv", "id,name\n7,Apply Eye-Makeup\n0,  two  spaces \n3,x\n")
    assert read_class_names(path) == ["Apply Eye-Makeup", "  two  spaces ", "x"]
    with pytest.raises(AnnotationError, match="no column name"):
        read_class_names(write(tmp_path / "bad.csv", "id,label\n0,a\n"))
    with pytest.raises(AnnotationError, match="no classes"):
        read_class_names(write(tmp_path / "empty.csv", "id,name\n"))
    with pytest.raises(AnnotationError, match="class 1 has an empty name"):
        read_class_names(write(tmp_path / "blank.csv", "id,name\n0,a\n1,\n"))


@pytest.mark.parametrize("name,count,first,last", [
    ("kinetics400", 400, "abseiling", "zumba"), ("kinetics600", 600, "abseiling", "zumba"),
    ("hmdb51", 51, "brush hair", "wave"), ("ucf101", 101, "ApplyEyeMakeup", "YoYo")])
def test_shipped_label_csvs(name, count, first, last):
    names = read_class_names(LABEL_CSVS[name])
    assert len(names) == len(set(names)) == count and names[0] == first and names[-1] == last


def test_list_file_paths_labels_and_blank_lines(tmp_path):
    path = write(tmp_path / "list.txt", "a/x.mp4 3\n\n  b.avi\t0  \nc.webm 5\n")
    assert read_video_list(path, "/data", 6) == [LabelledVideo("/data/a/x.mp4", 3),
                                                 LabelledVideo("/data/b.avi", 0),
                                                 LabelledVideo("/data/c.webm", 5)]


@pytest.mark.parametrize("line,message", [
    ("a.mp4", "line 2: expected 'relative/path label'"),
    ("a b.mp4 3", "line 2: expected 'relative/path label'"),
    ("a.mp4 three", "line 2: label 'three' is not an integer"),
    ("a.mp4 6", "line 2: label 6 is outside the labels CSV's range 0..5"),
    ("a.mp4 -1", "line 2: label -1 is outside")])
def test_bad_list_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "list.txt", f"ok.mp4 1\n{line}\n")
    with pytest.raises(AnnotationError, match=message) as error:
        read_video_list(path, "/data", 6)
    assert path in str(error.value)


def test_label_outside_the_csv_fails_when_the_loader_is_built(dataset_root, tmp_path):
    path = write(tmp_path / "list.txt", "videos/short_320x240_5f.mp4 6\n")
    with pytest.raises(AnnotationError, match="line 1: label 6"):
        loader_of(dataset_root, path)
    with pytest.raises(AnnotationError, match="does not exist"):
        loader_of(dataset_root, str(tmp_path / "missing.txt"))


def test_lmdb_gives_the_same_views_as_files(dataset_root):
    list_path = os.path.join(REFERENCE_DIR, "val_list.txt")
    from_files = [batch for batch in loader_of(dataset_root, list_path, num_crops=3)[0]]
    from_lmdb = [batch for batch in loader_of(dataset_root, list_path, lmdb=True, num_crops=3)[0]]
    assert len(from_files) == 2 and from_files[0][0].shape == (2, 6, 4, 3, 64, 64)
    for a, b in zip(from_files, from_lmdb):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert a[2].tolist() == [1] * len(a[2])


@pytest.mark.parametrize("lmdb", [False, True])
def test_broken_videos_are_counted_blank_clips_logged_once(dataset_root, tmp_path, caplog, lmdb):
    names = ["short_320x240_5f.mp4"] + list(BROKEN) + ["missing.mp4", "wide_400x224_41f.mp4"]
    list_path = write(tmp_path / "list.txt", "".join(f"videos/{n} {k % 6}\n" for k, n in enumerate(names)))
    loader, _ = loader_of(dataset_root, list_path, lmdb=lmdb, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="dataloaders.video_reader"):
        for _ in range(2):  # a second epoch logs nothing new
            batches = list(loader)
            valid = torch.cat([b[2] for b in batches])
            assert valid.tolist() == [1, 0, 0, 0, 0, 1]
            assert torch.cat([b[1] for b in batches]).tolist() == list(range(6))
            video = torch.cat([b[0] for b in batches])
            assert torch.isfinite(video).all() and not video[valid == 0].any()
            assert video[valid == 1].abs().sum(dim=(1, 2, 3, 4, 5)).min() > 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    for name, message in zip(names[1:5], messages):
        assert os.path.join(str(dataset_root), "videos", name) in message


def test_workers_give_the_same_batches_in_list_order(dataset_root):
    list_path = os.path.join(REFERENCE_DIR, "val_list.txt")
    single = list(loader_of(dataset_root, list_path, batch_size=3)[0])
    workers = list(loader_of(dataset_root, list_path, lmdb=True, batch_size=3, num_workers=2)[0])
    assert [len(b[0]) for b in workers] == [3, 1]
    for a, b in zip(single, workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_builder_is_the_registered_one():
    assert RECOGNITION_EVAL_LOADERS["video_list"] is build_recognition_eval_loader
    with pytest.raises(TypeError):
        build_recognition_eval_loader("list.txt")  # keyword-only
    assert np.all([os.path.isfile(p) for p in LABEL_CSVS.values()])
