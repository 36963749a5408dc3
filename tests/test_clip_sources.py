"""CLIP weights from open_clip and Hugging Face: converted into this project's layouts, the
converted models compared with the libraries' own forward (fp32, 1e-5), unsupported
architectures refused, the download path followed up to the network call, and a retrieval
training run started from a converted open_clip model; X-CLIP from both libraries."""
import argparse
import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, XCLIPConfig, XCLIPModel

import main as main_module
import params
from dataloaders.loaders import make_reader
from dataloaders.transforms import normalise_crops
from modules.checkpoint import read_checkpoint
from modules.clip import build_clip
from modules.clip_sources import hf_pooled, load_pretrained_clip
from modules.factory import build_recognition_model
from modules.tokenizer import SimpleTokenizer, tokenize_caption
from modules.xclip import build_xclip_from_checkpoint, tokenize_class_names
from tests.tiny_datasets import write_msvd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a man is cooking pasta", "a red square moves to the left", "dogs"]
HALF = (0.5, 0.5, 0.5)


def assert_close(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def images(resolution, count=2, seed=0):
    return torch.randn(count, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))


def tiny_open_clip_config(quick_gelu):
    """A ViT-B/16-shaped open_clip model, shrunk: 16-pixel patches on 64-pixel images, 2 heads of 32."""
    return {"embed_dim": 32, "quick_gelu": quick_gelu,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def write_open_clip_folder(folder, model_cfg, mean=HALF, std=HALF, seed=0):
    """An open_clip local-dir folder (open_clip_config.json + open_clip_pytorch_model.bin) of random weights."""
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**model_cfg)
    torch.save(model.state_dict(), os.path.join(folder, "open_clip_pytorch_model.bin"))
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {"mean": mean, "std": std}}, f)
    return f"open_clip:local-dir:{folder}"


@torch.no_grad()
def test_open_clip_vit_b32_converts_exactly_and_keeps_gelu(tmp_path):
    library = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    torch.save(library.state_dict(), tmp_path / "b32.pt")
    weights = load_pretrained_clip(f"open_clip:ViT-B-32/{tmp_path / 'b32.pt'}")
    config = weights.config
    assert (config.vision_layers, config.vision_width, config.vision_patch_size, config.vision_heads) == (12, 768, 32, 12)
    assert (config.transformer_heads, config.activation, weights.xclip) == (8, "gelu", False)
    ours = build_clip(weights.state_dict, config=config).eval()
    x, texts = images(224), tokenize_class_names(CAPTIONS)
    assert_close(ours.encode_image(x), library.encode_image(x))
    assert_close(ours.encode_text(texts), library.encode_text(texts))
    # The activation is not in the keys: built with OpenAI's QuickGELU, the same weights compute otherwise.
    quick = build_clip(weights.state_dict, config=replace(config, activation="quick_gelu")).eval()
    assert (quick.encode_image(x) - library.encode_image(x)).abs().max() > 1e-3


@torch.no_grad()
def test_open_clip_local_folder_b16_shape_carries_heads_activation_and_statistics(tmp_path):
    name = write_open_clip_folder(str(tmp_path / "tiny"), tiny_open_clip_config(quick_gelu=True), mean=(0.5, 0.4, 0.3))
    weights = load_pretrained_clip(name)
    config = weights.config
    assert (config.image_resolution, config.vision_patch_size, config.vision_heads) == (64, 16, 2)
    assert (config.activation, config.image_mean, config.image_std) == ("quick_gelu", (0.5, 0.4, 0.3), HALF)
    library = open_clip.create_model(name[len("open_clip:"):]).eval()
    ours = build_clip(weights.state_dict, config=config).eval()
    x, texts = images(64), tokenize_class_names(CAPTIONS)
    assert_close(ours.encode_image(x), library.encode_image(x))
    assert_close(ours.encode_text(texts), library.encode_text(texts))


@pytest.mark.parametrize("change, message", [
    ({"vision_cfg": {"ls_init_value": 0.1}}, "do not fit OpenAI's CLIP layout"),  # LayerScale: extra keys
    ({"text_cfg": {"pool_type": "last"}}, "text features differ"),  # same keys, another computation
])
def test_open_clip_architectures_this_project_does_not_build_are_refused(tmp_path, change, message):
    model_cfg = tiny_open_clip_config(quick_gelu=False)
    for tower, values in change.items():
        model_cfg[tower] = {**model_cfg[tower], **values}
    with pytest.raises(ValueError, match=message):
        load_pretrained_clip(write_open_clip_folder(str(tmp_path / "odd"), model_cfg))


def tiny_hf_tower(**extra):
    return {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 2, **extra}


@torch.no_grad()
def test_hugging_face_clip_folder_converts_exactly(tmp_path):
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(text_config=tiny_hf_tower(hidden_act="gelu"), projection_dim=32,
                              vision_config=tiny_hf_tower(image_size=64, patch_size=16, hidden_act="gelu"))).eval()
    hf.save_pretrained(tmp_path / "hf")
    with open(tmp_path / "hf" / "preprocessor_config.json", "w") as f:
        json.dump({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2]}, f)
    weights = load_pretrained_clip(f"hf:{tmp_path / 'hf'}")
    config = weights.config
    assert (config.vision_heads, config.transformer_heads, config.activation) == (2, 2, "gelu")
    assert (config.image_mean, config.image_std) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    ours = build_clip(weights.state_dict, config=config).eval()
    x, texts = images(64), tokenize_class_names(CAPTIONS)
    assert_close(ours.encode_image(x), hf_pooled(hf.get_image_features(pixel_values=x)))
    assert_close(ours.encode_text(texts), hf_pooled(hf.get_text_features(input_ids=texts)))


def tiny_hf_xclip(mit_heads=1):
    torch.manual_seed(0)
    return XCLIPModel(XCLIPConfig(
        text_config=tiny_hf_tower(num_attention_heads=1),
        vision_config=tiny_hf_tower(num_attention_heads=1, image_size=32, patch_size=16, num_frames=4, mit_hidden_size=64,
                                    mit_intermediate_size=256, mit_num_attention_heads=mit_heads, mit_num_hidden_layers=1),
        projection_dim=64, prompt_layers=2, prompt_num_attention_heads=1, prompt_attention_dropout=0.0)).eval()


@torch.no_grad()
def test_hugging_face_xclip_gives_the_librarys_logits_and_video_features(tmp_path):
    hf = tiny_hf_xclip()
    hf.save_pretrained(tmp_path / "xclip")
    weights = load_pretrained_clip(f"hf:{tmp_path / 'xclip'}")
    assert weights.xclip and "mit.positional_embedding" in weights.state_dict
    ours = build_xclip_from_checkpoint(weights.state_dict, 4, clip_config=weights.config).eval()
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = tokenize_class_names(CAPTIONS)
    theirs = hf(input_ids=texts, pixel_values=video)
    assert_close(ours(video, texts), theirs.logits_per_video)
    assert_close(ours.encode_video(video)[0], hf_pooled(hf.get_video_features(pixel_values=video)))


def test_hugging_face_xclip_with_other_head_counts_is_refused(tmp_path):
    """Our MIT takes width/64 heads; a model with 2 heads of 32 computes something else."""
    tiny_hf_xclip(mit_heads=2).save_pretrained(tmp_path / "xclip")
    with pytest.raises(ValueError, match="logits differ from the library's"):
        load_pretrained_clip(f"hf:{tmp_path / 'xclip'}")


class HubStandIn(http.server.BaseHTTPRequestHandler):
    """Answers every request 404 and records it: where the download path ends."""
    requests = []

    def do_HEAD(self):
        self.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


DOWNLOAD_SCRIPT = """
from modules.clip_sources import hf_pooled, load_pretrained_clip
from modules.factory import build_recognition_model
for name in ("open_clip:ViT-B-32/laion2b_s34b_b79k", "hf:openai/clip-vit-base-patch32"):
    for download in (False, True):
        try:
            load_pretrained_clip(name, download=download)
        except Exception as err:
            print(name, download, type(err).__name__, str(err).splitlines()[0])
"""


def test_download_path_goes_through_the_libraries_caches_up_to_the_network_call(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HUB_CACHE=str(tmp_path / "cache"),
               HF_HUB_DISABLE_TELEMETRY="1")
    try:
        run = subprocess.run([sys.executable, "-c", DOWNLOAD_SCRIPT], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    finally:
        server.shutdown()
    lines = run.stdout.splitlines()
    assert len(lines) == 4, run.stdout + run.stderr
    offline_tag, online_tag, offline_hub, online_hub = lines
    assert "FileNotFoundError" in offline_tag and "pass --download_clip 1" in offline_tag
    assert "RuntimeError could not download laion/CLIP-ViT-B-32-laion2B-s34B-b79K/" in online_tag
    assert "FileNotFoundError" in offline_hub and "pass --download_clip 1" in offline_hub
    assert "hf:openai/clip-vit-base-patch32" in online_hub
    # Offline runs made no request; downloads asked the hub for the tag's weights (safetensors first, as
    # open_clip does) and for the hub model's config.
    prefix = "/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
    assert HubStandIn.requests[:2] == [prefix + "open_clip_pytorch_model.safetensors", prefix + "open_clip_pytorch_model.bin"]
    assert "/openai/clip-vit-base-patch32/resolve/main/config.json" in HubStandIn.requests


def train_flags(msvd, out, name, *extra):
    return ["--output_dir", str(out), "--pretrained_clip_name", name, "--max_words", "12", "--max_frames", "4",
            "--batch_size_val", "4", "--num_thread_reader", "0", "--epochs", "1", "--batch_size", "4",
            "--lr", "1e-3", "--optim", "AdamW", "--n_display", "1", "--freeze_layer_num", "-1", *msvd, *extra]


def test_retrieval_trains_from_a_converted_open_clip_and_evaluates_without_it(tmp_path):
    folder = str(tmp_path / "open_clip")
    name = write_open_clip_folder(folder, tiny_open_clip_config(quick_gelu=False), mean=(0.5, 0.4, 0.3))
    start = load_pretrained_clip(name).state_dict
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    main_module.main(train_flags(msvd, tmp_path / "train", name, "--do_train", "1"))
    checkpoint = read_checkpoint(str(tmp_path / "train" / "ckpt.pth.tar"))
    assert checkpoint["clip_config"]["activation"] == "gelu"
    assert tuple(checkpoint["hparams"]["image_mean"]) == (0.5, 0.4, 0.3)  # the loaders normalised with them
    trained = checkpoint["state_dict"]
    assert torch.isfinite(trained["clip.visual.conv1.weight"]).all()
    assert not torch.equal(trained["clip.visual.conv1.weight"], start["visual.conv1.weight"])

    resume = ["--do_train", "0", "--do_eval", "1", "--resume", str(tmp_path / "train" / "ckpt.pth.tar")]
    main_module.main(train_flags(msvd, tmp_path / "eval", name, *resume))
    shutil.rmtree(folder)  # neither open_clip's config nor its weights: the checkpoint describes itself
    main_module.main(train_flags(msvd, tmp_path / "eval_alone", name, *resume))
    with_source = np.load(tmp_path / "eval" / "sim_matrix.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "eval_alone" / "sim_matrix.npy"), with_source)


def recognition_args(tmp_path, name, size):
    (tmp_path / "val.txt").write_text("v0.mp4 0\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,a man is cooking pasta\n")
    return params.get_args(["--task_type", "recognition", "--datatype", "video_list", "--features_path", str(tmp_path),
                            "--train_list", str(tmp_path / "val.txt"), "--val_list", str(tmp_path / "val.txt"),
                            "--labels_csv", str(tmp_path / "labels.csv"),
                            "--output_dir", str(tmp_path / "out"), "--pretrained_clip_name", name,
                            "--max_frames", "4", "--do_eval", "1", "--opts", "DATA.INPUT_SIZE", str(size)])


@torch.no_grad()
def test_the_xclip_task_loads_a_hugging_face_xclip_whole(tmp_path):
    hf = tiny_hf_xclip()
    hf.save_pretrained(tmp_path / "xclip")
    model, _ = build_recognition_model(recognition_args(tmp_path, f"hf:{tmp_path / 'xclip'}", 32))
    video = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    texts = tokenize_class_names(CAPTIONS)
    assert_close(model.eval()(video, texts), hf(input_ids=texts, pixel_values=video).logits_per_video)


def test_the_xclip_task_starts_from_an_open_clip_with_its_activation(tmp_path):
    """X-CLIP's new parts are initialised as the original; CLIP's blocks keep the model's GELU."""
    name = write_open_clip_folder(str(tmp_path / "open_clip"), tiny_open_clip_config(quick_gelu=False))
    model, _ = build_recognition_model(recognition_args(tmp_path, name, 64))
    source = load_pretrained_clip(name).state_dict
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
    blocks = list(model.visual.transformer.resblocks) + list(model.transformer.resblocks)
    assert all(type(block.mlp.gelu) is torch.nn.GELU for block in blocks)
    assert model.config.vision_heads == 2 and model.visual.transformer.resblocks[0].attn.heads == 2


def test_retrieval_frames_are_normalised_with_the_models_statistics():
    args = argparse.Namespace(max_frames=2, lmdb_dataset=None, image_resolution=32, image_mean=(0.5, 0.4, 0.3),
                              image_std=(0.2, 0.25, 0.5))
    reader = make_reader(args, train=False)
    crops = torch.full((2, 3, 32, 32), 153, dtype=torch.uint8)  # 153 / 255 = 0.6
    video = normalise_crops(crops, reader.mean, reader.std)
    expected = [(0.6 - m) / s for m, s in zip(args.image_mean, args.image_std)]
    assert [video[:, c].unique().item() for c in range(3)] == pytest.approx(expected, abs=1e-6)


@torch.no_grad()
def test_zero_shot_retrieval_from_a_hugging_face_folder_equals_the_library(tmp_path):
    """Eval-only without --resume: the similarity matrix is the library's CLIP on the same frames
    (normalised with the model's own statistics), mean-pooled as meanP does."""
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(text_config=tiny_hf_tower(hidden_act="gelu"), projection_dim=32,
                              vision_config=tiny_hf_tower(image_size=64, patch_size=16, hidden_act="gelu"))).eval()
    hf.save_pretrained(tmp_path / "hf")
    statistics = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(statistics))
    msvd = write_msvd(str(tmp_path / "msvd"), captions_per_video=(1, 1, 1, 1), frames=5)
    main_module.main(train_flags(msvd, tmp_path / "eval", f"hf:{tmp_path / 'hf'}", "--do_train", "0", "--do_eval", "1"))
    args = argparse.Namespace(max_frames=4, lmdb_dataset=None, image_resolution=64, image_mean=statistics["image_mean"],
                              image_std=statistics["image_std"])
    reader, tokenizer = make_reader(args, train=False), SimpleTokenizer()
    videos, texts = [], []
    with open(tmp_path / "msvd" / "raw-captions.pkl", "rb") as f:
        captions = pickle.load(f)
    for i in range(4):
        clip, mask = reader(str(tmp_path / "msvd" / "videos" / f"clip{i}.avi"))  # (1, T, 3, 64, 64), (1, T)
        frames = torch.nn.functional.normalize(hf_pooled(hf.get_image_features(pixel_values=clip[0])), dim=-1)
        valid = torch.as_tensor(mask[0], dtype=torch.float32)[:, None]  # (T, 1)
        videos.append((frames * valid).sum(0) / valid.sum())
        ids = tokenize_caption(tokenizer, " ".join(captions[f"clip{i}"][0]), 12)[0]
        texts.append(hf_pooled(hf.get_text_features(input_ids=torch.as_tensor(ids)[None]))[0])
    video = torch.nn.functional.normalize(torch.stack(videos), dim=-1)
    text = torch.nn.functional.normalize(torch.stack(texts), dim=-1)
    expected = hf.logit_scale.exp() * text @ video.T
    np.testing.assert_allclose(np.load(tmp_path / "eval" / "sim_matrix.npy"), expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("name, module", [("open_clip:ViT-B-32/laion2b_s34b_b79k", "open_clip"),
                                          ("hf:openai/clip-vit-base-patch32", "transformers")])
def test_a_missing_library_names_its_requirements_file(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError, match=f"needs the `{module}` package: pip install -r requirements-weights.txt"):
        load_pretrained_clip(name)
