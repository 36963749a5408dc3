"""The five datasets on annotation files in their real formats, and the registry's loaders."""
import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

import params
from dataloaders import DATALOADERS, activity, didemo, lsmdc, msrvtt, msvd
from dataloaders.annotations import AnnotationError
from dataloaders.sampling import uniform_indices
from dataloaders.transforms import frames_to_clip
from modules.tokenizer import SimpleTokenizer, tokenize_caption
from preprocess.folder2lmdb import folder_to_lmdb
from tests import video_factory as vf

T, LW = 4, 16


@pytest.fixture(scope="module")
def tokenizer():
    return SimpleTokenizer()


def make_video(path, num_frames=9, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return vf.write_video(str(path), num_frames=num_frames, width=96, height=64, keyint=4, seed=seed)


def get_args(datatype, tmp_path, *extra):
    return params.get_args(["--datatype", datatype, "--output_dir", str(tmp_path / "out"),
                            "--max_frames", str(T), "--max_words", str(LW), "--batch_size", "2",
                            "--batch_size_val", "3", "--num_thread_reader", "0", *extra])


def caption_ids(tokenizer, caption):
    return tokenize_caption(tokenizer, caption, LW)[0]


def check_batch(batch, size):
    ids, mask, segments, video, video_mask = batch
    assert ids.shape == mask.shape == segments.shape == (size, 1, LW) and ids.dtype == torch.int64
    assert video.shape == (size, 1, T, 3, 224, 224) and video.dtype == torch.float32
    assert video_mask.shape == (size, 1, T) and video_mask.dtype == torch.int64
    assert not segments.any() and torch.equal(mask, (ids > 0).long())


# ---------------------------------------------------------------- MSR-VTT

@pytest.fixture(scope="module")
def msrvtt_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt")
    for i in range(4):
        make_video(root / "videos" / f"video{i}.mp4", num_frames=6 + i, seed=i)
    with open(root / "train.csv", "w") as f:
        f.write("video_id\nvideo0\nvideo2\nvideo3\n")
    sentences = [{"video_id": f"video{v}", "caption": f"caption {c} of clip {v}", "sen_id": 10 * v + c}
                 for c in range(3) for v in range(4)]
    videos = [{"video_id": f"video{v}", "url": f"https://www.youtube.com/watch?v=x{v}", "id": v,
               "category": 1, "split": "train", "start time": 0.0, "end time": 3.0} for v in range(4)]
    with open(root / "MSRVTT_data.json", "w") as f:
        json.dump({"info": {}, "videos": videos, "sentences": sentences}, f)
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerow(["ret0", "msr1", "video1", "a man, a dog and a ball"])
        writer.writerow(["ret1", "msr3", "video3", "a photo of a cat"])
        writer.writerow(["ret2", "msr9", "video9", "this video is missing"])
    return root


def msrvtt_args(root, tmp_path, *extra):
    return get_args("msrvtt", tmp_path, "--train_csv", str(root / "train.csv"),
                    "--data_path", str(root / "MSRVTT_data.json"), "--val_csv", str(root / "test.csv"),
                    "--features_path", str(root / "videos"), *extra)


def test_msrvtt_train_one_random_caption_per_video(msrvtt_data, tmp_path, tokenizer):
    loader, length, sampler = DATALOADERS["msrvtt"]["train"](msrvtt_args(msrvtt_data, tmp_path), tokenizer)
    assert length == 3 and sampler is None and loader.drop_last and loader.batch_size == 2
    dataset = loader.dataset
    assert [os.path.basename(p.video_path) for p in dataset.pairs] == ["video0.mp4", "video2.mp4", "video3.mp4"]
    assert dataset.pairs[1].captions == tuple(f"caption {c} of clip 2" for c in range(3))
    assert dataset.reader.train
    drawn = {tuple(dataset[1][0][0].tolist()) for _ in range(30)}
    assert drawn == {tuple(caption_ids(tokenizer, f"caption {c} of clip 2").tolist()) for c in range(3)}
    batches = list(loader)
    assert len(batches) == 1  # 3 pairs, batch 2, last one dropped
    check_batch(batches[0], 2)


def test_long_caption_is_truncated(tokenizer):
    ids, mask, segments = tokenize_caption(tokenizer, "a photo of a cat " * 10, LW)
    assert ids.tolist() == [49406] + [320, 1125, 539, 320, 2368] * 2 + [320, 1125, 539, 320, 49407]
    assert mask.tolist() == [1] * LW and segments.tolist() == [0] * LW


def test_msrvtt_train_expanded_every_pair(msrvtt_data, tmp_path, tokenizer):
    args = msrvtt_args(msrvtt_data, tmp_path, "--expand_msrvtt_sentences")
    loader, length, _ = DATALOADERS["msrvtt"]["train"](args, tokenizer)
    assert length == 9
    pairs = loader.dataset.pairs
    # json order (caption-major in this file), videos of the split only
    assert [(os.path.basename(p.video_path), p.captions[0]) for p in pairs[:4]] == [
        ("video0.mp4", "caption 0 of clip 0"), ("video2.mp4", "caption 0 of clip 2"),
        ("video3.mp4", "caption 0 of clip 3"), ("video0.mp4", "caption 1 of clip 0")]


def test_msrvtt_test_split(msrvtt_data, tmp_path, tokenizer):
    args = msrvtt_args(msrvtt_data, tmp_path)
    assert DATALOADERS["msrvtt"]["val"] is None
    loader, length = DATALOADERS["msrvtt"]["test"](args, tokenizer)
    assert length == 3 and not loader.dataset.reader.train
    assert not loader.dataset.multi_sentence_per_video
    (batch,) = list(loader)
    check_batch(batch, 3)
    ids, mask, _, video, video_mask = batch
    assert torch.equal(ids[0, 0], torch.from_numpy(caption_ids(tokenizer, "a man, a dog and a ball")))
    assert ids[1, 0].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] + [0] * (LW - 7)
    assert mask[1, 0].tolist() == [1] * 7 + [0] * (LW - 7)
    reference = vf.decode_all_frames(msrvtt_data / "videos" / "video1.mp4")  # 7 frames
    expected = frames_to_clip(np.stack([reference[i] for i in uniform_indices(7, T)]))
    assert torch.equal(video[0, 0], expected) and video_mask[0, 0].tolist() == [1] * T
    assert not video_mask[2].any() and not video[2].any()  # video9 does not exist


def test_msrvtt_annotation_errors(msrvtt_data, tmp_path, tokenizer):
    with pytest.raises(AnnotationError, match="nothere.csv.*video_id"):
        msrvtt.load_train_pairs(str(tmp_path / "nothere.csv"), str(msrvtt_data / "MSRVTT_data.json"), "", False)
    (tmp_path / "bad.json").write_text('{"videos": [], "sentences": [{"video_id": "video0"}]}')
    with pytest.raises(AnnotationError, match="bad.json.*caption"):
        msrvtt.load_train_pairs(str(msrvtt_data / "train.csv"), str(tmp_path / "bad.json"), "", False)
    (tmp_path / "bad.csv").write_text("key,vid_key,video\nret0,msr1,video1\n")
    with pytest.raises(AnnotationError, match="bad.csv.*key,vid_key,video_id,sentence"):
        msrvtt.load_test_pairs(str(tmp_path / "bad.csv"), "")


# ---------------------------------------------------------------- MSVD

@pytest.fixture(scope="module")
def msvd_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("msvd")
    names = ["-abc_1_5", "xyz_10_20", "q.w_0_3", "nofile_0_1"]
    make_video(root / "videos" / "a" / f"{names[0]}.avi", seed=1)
    make_video(root / "videos" / "b" / f"{names[1]}.avi", seed=2)
    make_video(root / "videos" / f"{names[2]}.avi", seed=3)
    captions = {names[0]: [["a", "cat"], ["the", "cat", "sleeps"]],
                names[1]: [["one"], ["two"], ["three"]],
                names[2]: [["dots", "in", "name"]],
                names[3]: [["no", "video"], ["still", "counted"]]}
    with open(root / "raw-captions.pkl", "wb") as f:
        pickle.dump(captions, f)
    (root / "train_list.txt").write_text(f"{names[1]}\n{names[0]}\n")
    (root / "val_list.txt").write_text(f"{names[2]}\n")
    (root / "test_list.txt").write_text("\n".join(names) + "\n")
    return root, names


def test_msvd_multi_sentence_bookkeeping(msvd_data, tmp_path, tokenizer):
    root, names = msvd_data
    args = get_args("msvd", tmp_path, "--data_path", str(root), "--features_path", str(root / "videos"))
    loader, length = DATALOADERS["msvd"]["test"](args, tokenizer)
    dataset = loader.dataset
    assert length == 8 and dataset.multi_sentence_per_video
    assert dataset.cut_off_points == [1, 4, 5, 7]  # index of each video's last caption
    assert dataset.sentence_num == 8 and dataset.video_num == 4
    assert [p.captions[0] for p in dataset.pairs[:3]] == ["a cat", "the cat sleeps", "one"]
    assert dataset.pairs[0].video_path == str(root / "videos" / "a" / f"{names[0]}.avi")
    assert dataset.pairs[5].video_path == str(root / "videos" / f"{names[2]}.avi")
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    masks = torch.cat([b[4] for b in batches])
    # Only each video's last caption decodes it (the evaluation encodes that one); the video
    # without a file reads as broken.
    assert masks.any(dim=-1).flatten().tolist() == [False, True, False, False, True, True, False, False]
    assert masks[[1, 4, 5]].all()
    val_loader, val_length = DATALOADERS["msvd"]["val"](args, tokenizer)
    assert val_length == 1 and val_loader.dataset.cut_off_points == [0]
    train_loader, train_length, _ = DATALOADERS["msvd"]["train"](args, tokenizer)
    assert train_length == 5 and not train_loader.dataset.multi_sentence_per_video


def test_msvd_lmdb_mode_resolves_names_from_keys(msvd_data, tmp_path, tokenizer):
    root, names = msvd_data
    folder_to_lmdb(str(root / "videos"), str(tmp_path / "msvd.lmdb"), progress=False)
    args = get_args("msvd", tmp_path, "--data_path", str(root), "--features_path", str(tmp_path / "absent"),
                    "--lmdb_dataset", str(tmp_path / "msvd.lmdb"))
    loader, _ = DATALOADERS["msvd"]["test"](args, tokenizer)
    assert loader.dataset.pairs[0].video_path == str(tmp_path / "absent" / f"{names[0]}.avi")
    masks = torch.cat([b[4] for b in loader])
    assert masks.any(dim=-1).flatten().tolist() == [False, True, False, False, True, True, False, False]


def test_msvd_annotation_errors(msvd_data, tmp_path):
    root, names = msvd_data
    with pytest.raises(AnnotationError, match="train_list.txt.*one video id per line"):
        msvd.load_pairs(str(tmp_path), "", "train")
    (tmp_path / "train_list.txt").write_text("unknown_id\n")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"other": [["x"]]}))
    with pytest.raises(AnnotationError, match="raw-captions.pkl.*unknown_id"):
        msvd.load_pairs(str(tmp_path), "", "train")
    (tmp_path / "raw-captions.pkl").write_bytes(b"not a pickle")
    with pytest.raises(AnnotationError, match="raw-captions.pkl.*list of words"):
        msvd.load_pairs(str(tmp_path), "", "train")


# ---------------------------------------------------------------- LSMDC

@pytest.fixture(scope="module")
def lsmdc_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsmdc")
    clips = ["0001_Movie_00.00.01.000-00.00.03.000", "0001_Movie_00.00.05.000-00.00.07.000",
             "0002_Other_01.02.03.004-01.02.05.006"]
    make_video(root / "videos" / "0001_Movie" / f"{clips[0]}.avi", seed=4)
    make_video(root / "videos" / "0001_Movie" / f"{clips[1]}.avi", seed=5)
    lines = [f"{clips[0]}\t00.00.01.000\t00.00.03.000\t00.00.01.000\t00.00.03.000\tSOMEONE opens a door.",
             f"{clips[1]}\t1\t2\t3\t4\tHe sits.",
             f"{clips[2]}\t1\t2\t3\t4\tNot in video_path.json.",
             f"{clips[0]}\t1\t2\t3\t4\tA second sentence for the first clip."]
    for name in lsmdc.ANNOTATION_FILES.values():
        (root / name).write_text("\n".join(lines) + "\n")
    with open(root / "video_path.json", "w") as f:
        json.dump({c: f"0001_Movie/{c}.avi" for c in clips[:2]}, f)
    return root, clips


def test_lsmdc_pairs(lsmdc_data, tmp_path, tokenizer):
    root, clips = lsmdc_data
    args = get_args("lsmdc", tmp_path, "--data_path", str(root), "--features_path", str(root / "videos"))
    for split in ("val", "test"):
        loader, length = DATALOADERS["lsmdc"][split](args, tokenizer)
        assert length == 3
    assert [p.captions[0] for p in loader.dataset.pairs] == [
        "SOMEONE opens a door.", "He sits.", "A second sentence for the first clip."]
    assert loader.dataset.pairs[2].video_path == str(root / "videos" / "0001_Movie" / f"{clips[0]}.avi")
    (batch,) = list(loader)
    check_batch(batch, 3)
    assert batch[4].all()
    loader, length, _ = DATALOADERS["lsmdc"]["train"](args, tokenizer)
    assert length == 3 and loader.dataset.reader.train


def test_lsmdc_malformed_line(tmp_path):
    (tmp_path / "LSMDC16_annos_training.csv").write_text("clip\t1\t2\t3\t4\tok\nclip\tonly three\tfields\n")
    with pytest.raises(AnnotationError, match=r"LSMDC16_annos_training.csv.*line 2 has 3 fields.*tab-separated"):
        lsmdc.load_pairs(str(tmp_path), "", "train")


# ---------------------------------------------------------------- ActivityNet

@pytest.fixture(scope="module")
def activity_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("activity")
    make_video(root / "videos" / "v_aaa.mp4", num_frames=30, seed=6)  # 10 s at 3 fps
    make_video(root / "videos" / "v_bbb.mp4", num_frames=12, seed=7)
    make_video(root / "videos" / "v_NHznDFD3V3k.mp4", num_frames=6, seed=8)
    ids = ["v_aaa", "v_bbb", "v_aaa", "v_NHznDFD3V3k", "v_nocaption", "v_nopath"]
    captions = {"v_aaa": {"duration": 4.2, "timestamps": [[0, 2], [2, 4.2]],
                          "sentences": ["A man runs.", " He jumps."]},
                "v_bbb": {"duration": 0.0, "timestamps": [[0, 0]], "sentences": ["Short."]},
                "v_NHznDFD3V3k": {"duration": 2, "timestamps": [[0, 1]], "sentences": ["Broken."]},
                "v_nopath": {"duration": 2, "timestamps": [[0, 1]], "sentences": ["No path."]}}
    for split in ("train", "val"):
        with open(root / f"{split}_ids.json", "w") as f:
            json.dump(ids, f)
    for name in ("train.json", "val_1.json"):
        with open(root / name, "w") as f:
            json.dump(captions, f)
    with open(root / "video_path.json", "w") as f:
        json.dump({"aaa": "v_aaa.mp4", "bbb": "v_bbb.mp4", "NHznDFD3V3k": "v_NHznDFD3V3k.mp4"}, f)
    return root


def test_activity_paragraphs_and_windows(activity_data, tmp_path, tokenizer):
    root = activity_data
    args = get_args("activity", tmp_path, "--data_path", str(root), "--features_path", str(root / "videos"))
    assert DATALOADERS["activity"]["val"] is None
    loader, length = DATALOADERS["activity"]["test"](args, tokenizer)
    pairs = loader.dataset.pairs
    assert length == 2
    assert pairs[0].captions == ("A man runs.  He jumps.",) and pairs[0].window == (0, 5)
    assert pairs[1].window == (0, 1)  # duration 0: the window is widened to one second
    (batch,) = list(loader)
    check_batch(batch, 2)
    # window [0, 5] s at 3 fps: frames 0..15 (inclusive end), uniform over 16 frames
    reference = vf.decode_all_frames(root / "videos" / "v_aaa.mp4")
    expected = frames_to_clip(np.stack([reference[i] for i in uniform_indices(16, T)]))
    assert torch.equal(batch[3][0, 0], expected)
    # window [0, 1] s: frames 0..3 of v_bbb
    assert batch[4][1, 0].tolist() == [1, 1, 1, 1]
    reference = vf.decode_all_frames(root / "videos" / "v_bbb.mp4")
    assert torch.equal(batch[3][1, 0], frames_to_clip(np.stack(reference[:4])))
    train_loader, train_length, _ = DATALOADERS["activity"]["train"](args, tokenizer)
    assert train_length == 2 and train_loader.dataset.reader.train


def test_activity_annotation_errors(tmp_path):
    (tmp_path / "train_ids.json").write_text('{"v_a": 1}')
    with pytest.raises(AnnotationError, match="train_ids.json.*list of ids"):
        activity.load_pairs(str(tmp_path), "", "train")
    (tmp_path / "train_ids.json").write_text('["v_a"]')
    (tmp_path / "train.json").write_text('{"v_a": {"sentences": ["x"]}}')
    with pytest.raises(AnnotationError, match="train.json.*duration"):
        activity.load_pairs(str(tmp_path), "", "train")
    (tmp_path / "train.json").write_text('{"v_a": ')
    with pytest.raises(AnnotationError, match="train.json is not valid JSON"):
        activity.load_pairs(str(tmp_path), "", "train")


# ---------------------------------------------------------------- DiDeMo

@pytest.fixture(scope="module")
def didemo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("didemo")
    ids = ["111@N00_1_aa.mov", "222@N00_2_bb.3gp", "333@N00_3_cc.mp4", "444@N00_4_dd.avi",
           didemo.MISSING_VIDEOS[0]]
    make_video(root / "videos" / ids[0], num_frames=100, seed=9)  # 33 s at 3 fps
    make_video(root / "videos" / "x" / f"{ids[1]}.mp4", seed=10)  # compressed copy: extra suffix
    make_video(root / "videos" / ids[2], seed=11)
    make_video(root / "videos" / didemo.MISSING_VIDEOS[0], seed=12)
    items = [{"video": ids[1], "description": "first of bb", "times": [[0, 0], [1, 1]]},
             {"video": ids[0], "description": "first of aa", "times": [[2, 3]]},
             {"video": ids[1], "description": "second of bb", "times": [[1, 2]]},
             {"video": ids[3], "description": "no file", "times": [[0, 0]]},
             {"video": didemo.MISSING_VIDEOS[0], "description": "known missing", "times": [[0, 0]]},
             {"video": "notlisted.mov", "description": "not in the list", "times": [[0, 0]]}]
    for split in ("train", "val", "test"):
        (root / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
        with open(root / f"{split}_data.json", "w") as f:
            json.dump(items, f)
    return root, ids


def test_didemo_paragraphs(didemo_data, tmp_path, tokenizer):
    root, ids = didemo_data
    args = get_args("didemo", tmp_path, "--data_path", str(root), "--features_path", str(root / "videos"))
    loader, length = DATALOADERS["didemo"]["test"](args, tokenizer)
    pairs = loader.dataset.pairs
    assert length == 2  # ids[2] has no description, ids[3] no file, the known missing one skipped
    assert [p.captions[0] for p in pairs] == ["first of bb second of bb", "first of aa"]
    assert pairs[0].video_path == str(root / "videos" / "x" / f"{ids[1]}.mp4")
    assert all(p.window == (0, 31) for p in pairs)
    (batch,) = list(loader)
    check_batch(batch, 2)
    # 100 frames, window [0, 31] s at 3 fps: frames 0..93
    reference = vf.decode_all_frames(root / "videos" / ids[0])
    expected = frames_to_clip(np.stack([reference[i] for i in uniform_indices(94, T)]))
    assert torch.equal(batch[3][1, 0], expected)
    assert DATALOADERS["didemo"]["val"](args, tokenizer)[1] == 2
    assert DATALOADERS["didemo"]["train"](args, tokenizer)[1] == 2


def test_didemo_lmdb_mode(didemo_data, tmp_path, tokenizer):
    root, ids = didemo_data
    folder_to_lmdb(str(root / "videos"), str(tmp_path / "didemo.lmdb"), progress=False)
    pairs = didemo.load_pairs(str(root), str(tmp_path / "none"), "test", str(tmp_path / "didemo.lmdb"))
    assert [os.path.basename(p.video_path) for p in pairs] == [f"{ids[1]}.mp4", ids[0]]


def test_didemo_annotation_errors(tmp_path):
    (tmp_path / "test_list.txt").write_text("a.mov\n")
    with pytest.raises(AnnotationError, match="test_data.json does not exist"):
        didemo.load_pairs(str(tmp_path), "", "test")
    (tmp_path / "test_data.json").write_text('[{"video": "a.mov"}]')
    with pytest.raises(AnnotationError, match="test_data.json is malformed.*description"):
        didemo.load_pairs(str(tmp_path), "", "test")


# ---------------------------------------------------------------- registry and workers

def test_registry_contract():
    assert set(DATALOADERS) == {"msrvtt", "msvd", "lsmdc", "activity", "didemo", "demo"}
    for name, builders in DATALOADERS.items():
        assert set(builders) == {"train", "val", "test"}
        assert callable(builders["train"]) and callable(builders["test"])
    assert [n for n, b in DATALOADERS.items() if b["val"] is None] == ["msrvtt", "activity", "demo"]


def test_train_loader_uses_a_distributed_sampler_under_ddp(msrvtt_data, tmp_path, tokenizer):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}",
                                         rank=0, world_size=1)
    try:
        loader, length, sampler = DATALOADERS["msrvtt"]["train"](msrvtt_args(msrvtt_data, tmp_path), tokenizer)
        assert isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
        assert loader.sampler is sampler and length == 3
    finally:
        torch.distributed.destroy_process_group()


def test_workers_and_broken_videos_in_a_dataset(msrvtt_data, tmp_path, tokenizer):
    args = msrvtt_args(msrvtt_data, tmp_path, "--num_thread_reader", "2")
    loader, length = DATALOADERS["msrvtt"]["test"](args, tokenizer)
    assert loader.num_workers == 2 and not loader.pin_memory
    from dataloaders import count_broken_videos
    assert sum(count_broken_videos(batch[4]) for batch in loader) == 1
