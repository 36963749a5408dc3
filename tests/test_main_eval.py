"""Eval-only runs through main(): released-format checkpoints, metrics.json, sim_matrix.npy."""
import json
import os

import numpy as np
import pytest
import torch

import main as main_module
import params
from dataloaders import DATALOADERS
from modules.checkpoint import CheckpointMismatch
from modules.factory import create_model
from modules.metrics import retrieval_metrics
from modules.tokenizer import SimpleTokenizer
from tests.reference_clip import reference_image, reference_text
from tests.tiny_datasets import SCHEDULE, save_released_checkpoint, write_msrvtt, write_msvd, write_tiny_clip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    clip_sd = write_tiny_clip(str(root / "pretrained"))
    return root, clip_sd, write_msrvtt(str(root / "msrvtt")), write_msvd(str(root / "msvd"))


def common_flags(root, out):
    return ["--output_dir", str(out), "--pretrained_dir", str(root / "pretrained"), "--max_words", "16",
            "--max_frames", "4", "--batch_size_val", "4", "--num_thread_reader", "0", "--do_train", "0",
            "--do_eval", "1"]


def trained_checkpoint(clip_sd, flags, path, seed=0):
    """A model built from `flags` with its new weights perturbed, saved in the released format."""
    args = params.get_args(flags)
    model = create_model(args, clip_sd)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("clip.") or "tokencluster_inter" in name or name == "clip.visual.proj":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_released_checkpoint(model, str(path))
    return model.eval()


def expected_sim(model, flags):
    """Every test caption against every test video, one at a time, straight from the dataset."""
    args = params.get_args(flags)
    loader, _ = DATALOADERS[args.datatype]["test"](args, SimpleTokenizer())
    items = [loader.dataset[i] for i in range(len(loader.dataset))]
    with torch.no_grad():
        texts = [model.encode_text(torch.from_numpy(ids)[None]) for ids, *_ in items]
        cut = getattr(loader.dataset, "cut_off_points", range(len(items)))
        videos = [model.encode_video(items[i][3][None], torch.from_numpy(items[i][4])[None]) for i in cut]
        return np.array([[model.similarity(t, v, m).item() for v, m in videos] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("sim_header, cluster", [("meanP", False), ("seqTransf", False), ("meanP", True),
                                                 ("seqTransf", True)])
def test_eval_only_msrvtt(workspace, tmp_path, sim_header, cluster):
    root, clip_sd, msrvtt, _ = workspace
    flags = common_flags(root, tmp_path / "out") + msrvtt + ["--sim_header", sim_header]
    if cluster:
        flags += SCHEDULE + ["--cluster_embedding", "1", "--cluster_distance", "cosine", "--cluster_threshold", "1e-6"]
    model = trained_checkpoint({k: v.float() for k, v in clip_sd.items()}, flags, tmp_path / "ckpt.best.pth.tar")
    main_module.main(flags + ["--resume", str(tmp_path / "ckpt.best.pth.tar")])
    sim = np.load(tmp_path / "out" / "sim_matrix.npy")
    assert sim.shape == (6, 6) and sim.dtype == np.float32
    np.testing.assert_allclose(sim, expected_sim(model, flags), atol=1e-4, rtol=0)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics == retrieval_metrics(sim)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Text-to-Video:" in log and "V2T$R@1" in log


def test_eval_matches_plain_reference_forward(workspace, tmp_path):
    """meanP without clustering, against CLIP written out in the test (tests/reference_clip.py)."""
    root, clip_sd, msrvtt, _ = workspace
    flags = common_flags(root, tmp_path / "out") + msrvtt
    model = trained_checkpoint({k: v.float() for k, v in clip_sd.items()}, flags, tmp_path / "ckpt.pth.tar")
    main_module.main(flags + ["--resume", str(tmp_path / "ckpt.pth.tar")])
    sd = {k[len("clip."):]: v.float() for k, v in model.state_dict().items() if k.startswith("clip.")}
    args = params.get_args(flags)
    dataset = DATALOADERS["msrvtt"]["test"](args, SimpleTokenizer())[0].dataset
    texts, videos = [], []
    for ids, _, _, video, mask in (dataset[i] for i in range(len(dataset))):
        texts.append(reference_text(sd, torch.from_numpy(ids))[0])
        frames = reference_image(sd, video[0])
        frames = frames / frames.norm(dim=-1, keepdim=True)
        pooled = frames[torch.from_numpy(mask[0]).bool()].mean(0)
        videos.append(pooled / pooled.norm())
    text = torch.stack(texts)
    expected = sd["logit_scale"].exp() * (text / text.norm(dim=-1, keepdim=True)) @ torch.stack(videos).T
    np.testing.assert_allclose(np.load(tmp_path / "out" / "sim_matrix.npy"), expected.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cluster", [False, True])
def test_eval_only_msvd_multi_sentence(workspace, tmp_path, cluster):
    root, clip_sd, _, msvd = workspace
    flags = common_flags(root, tmp_path / "out") + msvd + ["--batch_size_val", "3"]
    if cluster:
        flags += SCHEDULE
    model = trained_checkpoint({k: v.float() for k, v in clip_sd.items()}, flags, tmp_path / "ckpt.pth.tar")
    main_module.main(flags + ["--resume", str(tmp_path / "ckpt.pth.tar")])
    sim = np.load(tmp_path / "out" / "sim_matrix.npy")
    assert sim.shape == (8, 4)  # captions x videos: one encoding per video
    np.testing.assert_allclose(sim, expected_sim(model, flags), atol=1e-4, rtol=0)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics == retrieval_metrics(sim, [1, 2, 5, 7])


def test_mismatched_checkpoint_names_the_flag(workspace, tmp_path):
    root, clip_sd, msrvtt, _ = workspace
    flags = common_flags(root, tmp_path / "out") + msrvtt
    trained_checkpoint({k: v.float() for k, v in clip_sd.items()}, flags + SCHEDULE + ["--cluster_embedding", "1"],
                       tmp_path / "ckpt.pth.tar")
    with pytest.raises(CheckpointMismatch, match="--cluster_embedding 1"):
        main_module.main(flags + SCHEDULE + ["--resume", str(tmp_path / "ckpt.pth.tar")])


def test_clip_rebuilt_from_checkpoint_when_weights_file_absent(workspace, tmp_path):
    root, clip_sd, msrvtt, _ = workspace
    flags = common_flags(root, tmp_path / "a") + msrvtt + SCHEDULE + ["--cluster_embedding", "1"]
    trained_checkpoint({k: v.float() for k, v in clip_sd.items()}, flags, tmp_path / "ckpt.pth.tar")
    main_module.main(flags + ["--resume", str(tmp_path / "ckpt.pth.tar")])
    elsewhere = flags[:flags.index("--pretrained_dir")] + ["--pretrained_dir", str(tmp_path / "empty")] + \
        flags[flags.index("--pretrained_dir") + 2:]
    elsewhere[elsewhere.index("--output_dir") + 1] = str(tmp_path / "b")
    main_module.main(elsewhere + ["--resume", str(tmp_path / "ckpt.pth.tar")])
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "sim_matrix.npy"), np.load(tmp_path / "b" / "sim_matrix.npy"))


def test_inference_speed_test_reports_videos_per_second(workspace, tmp_path):
    root, clip_sd, msrvtt, _ = workspace
    main_module.main(common_flags(root, tmp_path / "out") + msrvtt + ["--inference_speed_test", "1"])
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "inference speed: 6 videos in" in log and "videos/s" in log
    assert not os.path.exists(tmp_path / "out" / "metrics.json")
