import json

import pytest

from dataloaders import activity
from preprocess.video_paths import main, video_paths


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_ids_and_relative_paths(tmp_path):
    videos = tmp_path / "videos"
    touch(videos / "a" / "v_abc.mp4")
    touch(videos / "b" / "c" / "v_def.MKV")
    touch(videos / "v_ghi.avi")
    touch(videos / "notes.txt")
    out = tmp_path / "video_path.json"
    main(["--video_folder", str(videos), "--out", str(out), "--strip_prefix", "v_"])
    assert json.loads(out.read_text()) == {"abc": "a/v_abc.mp4", "def": "b/c/v_def.MKV", "ghi": "v_ghi.avi"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    # ActivityNet's loader finds the videos through it.
    (tmp_path / "train_ids.json").write_text(json.dumps(["v_abc", "v_def"]))
    (tmp_path / "train.json").write_text(json.dumps({"v_abc": {"duration": 3.2, "sentences": ["one.", "two."]},
                                                     "v_def": {"duration": 1.0, "sentences": ["three."]}}))
    pairs = activity.load_pairs(str(tmp_path), str(videos), "train")
    assert [p.video_path for p in pairs] == [str(videos / "a" / "v_abc.mp4"), str(videos / "b" / "c" / "v_def.MKV")]
    assert pairs[0].captions == ("one. two.",)


def test_duplicate_ids_and_empty_folders_are_refused(tmp_path, capsys):
    touch(tmp_path / "x" / "clip1.mp4")
    touch(tmp_path / "y" / "clip1.avi")
    with pytest.raises(ValueError, match="clip1.*x/clip1.mp4.*y/clip1.avi"):
        video_paths(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["--video_folder", str(tmp_path / "empty"), "--out", str(tmp_path / "o.json")])
    assert "--video_folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--video_folder", str(tmp_path / "missing"), "--out", str(tmp_path / "o.json")])
