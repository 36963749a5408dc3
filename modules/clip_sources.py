"""CLIP weights from open_clip and Hugging Face, named by `--pretrained_clip_name`:

    ViT-B/32, ViT-L/14@336px, ...              OpenAI's files (modules/clip.py)
    open_clip:ViT-B-32/laion2b_s34b_b79k       an open_clip model and pretrained tag (or a weights file)
    open_clip:local-dir:FOLDER                 a folder with open_clip_config.json and its weights
    hf:openai/clip-vit-base-patch32            a Hugging Face hub id (through the library's cache)
    hf:FOLDER                                  a folder as CLIPModel/XCLIPModel.save_pretrained writes it

The libraries build their own model once; its weights are converted into this project's layout
(OpenAI's keys, or the original X-CLIP's for an XCLIPModel) with a CLIPConfig that carries what
the keys cannot: the MLP activation, the head counts and the image statistics the model was
trained with. The converted model is then checked against the library's own forward on a probe
image and text, so an architecture this project does not build is refused, never run wrongly.
open_clip and transformers are optional (requirements-weights.txt), imported only here.
"""
import importlib
import json
import logging
import os
from dataclasses import dataclass

import torch

from modules.clip import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, CLIPConfig, build_clip
from modules.clip_convert import hf_clip_to_openai, hf_xclip_to_original

logger = logging.getLogger(__name__)

PREFIXES = ("open_clip:", "hf:")
OPEN_CLIP_URL_CACHE = os.path.expanduser("~/.cache/clip")  # where open_clip keeps URL downloads
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
PROBE_TOLERANCE = 1e-4  # relative to the largest feature value; fp32 conversions differ by ~1e-6


@dataclass
class PretrainedCLIP:
    state_dict: dict  # OpenAI's CLIP keys, or the original X-CLIP's when `xclip`
    config: CLIPConfig
    xclip: bool = False  # a whole X-CLIP model (Hugging Face XCLIPModel), not only CLIP


def is_converted_name(name):
    return name.startswith(PREFIXES)


def require(module, what):
    """Import an optional library, or say which requirements file provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the `{module}` package: pip install -r requirements-weights.txt") from err


# --- open_clip -------------------------------------------------------------------------------------

def split_open_clip_name(name):
    """`open_clip:MODEL/TAG` -> (MODEL, TAG); `open_clip:local-dir:FOLDER` -> ("local-dir:FOLDER", None)."""
    spec = name[len("open_clip:"):]
    if spec.startswith("local-dir:"):
        return spec, None
    model, _, tag = spec.partition("/")
    if not model or not tag:
        raise ValueError(f"--pretrained_clip_name {name}: name an open_clip model and its pretrained tag, "
                         "e.g. open_clip:ViT-B-32/laion2b_s34b_b79k, or open_clip:local-dir:FOLDER")
    return model, tag


def open_clip_model_config(open_clip, model):
    """(model_cfg, preprocess_cfg) of a built-in open_clip model or a local-dir folder."""
    if model.startswith("local-dir:"):
        path = os.path.join(model[len("local-dir:"):], "open_clip_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--pretrained_clip_name open_clip:{model}: {path} does not exist")
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        return saved["model_cfg"], saved.get("preprocess_cfg", {})
    config = open_clip.get_model_config(model)
    if config is None:
        raise ValueError(f"open_clip has no model {model}; see open_clip.list_models()")
    return config, {}


def config_from_open_clip(open_clip, model_cfg, mean, std):
    """CLIPConfig of an open_clip model config (the library's defaults fill what it omits)."""
    vision = open_clip.model.CLIPVisionCfg(**model_cfg["vision_cfg"])
    text = open_clip.model.CLIPTextCfg(**model_cfg["text_cfg"])
    if isinstance(vision.layers, (list, tuple)) or vision.timm_model_name:
        raise ValueError("only ViT open_clip models with OpenAI's image tower are supported (this one is a "
                         "ResNet or a timm tower)")
    if text.hf_model_name or text.hf_tokenizer_name or text.vocab_size != 49408:
        raise ValueError("this open_clip model does not use CLIP's BPE tokenizer and text tower, which this "
                         "project's tokenizer and text tower are")
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    return CLIPConfig(model_cfg["embed_dim"], size, vision.layers, vision.width, vision.patch_size,
                      text.context_length, text.vocab_size, text.width, text.heads, text.layers,
                      vision_heads=vision.width // vision.head_width,
                      activation="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
                      image_mean=tuple(mean), image_std=tuple(std))


def open_clip_weights_file(open_clip, model, tag, download):
    """(path of the weights of `tag`, the tag's pretrained config); `tag` may be a file path.
    Downloads through the library (Hugging Face cache, or a SHA-256-checked URL) when allowed."""
    pretrained = open_clip.get_pretrained_cfg(model, tag)
    if not pretrained:
        if os.path.isfile(tag):
            return tag, {}
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ValueError(f"open_clip model {model} has no pretrained tag {tag!r} and no file {tag} exists; "
                         f"tags: {tags}")
    if pretrained.get("hf_hub"):
        repo, filename = os.path.split(pretrained["hf_hub"])
        return hub_file(repo, filename or "open_clip_pytorch_model.bin", download), pretrained
    url = pretrained["url"]
    target = os.path.join(OPEN_CLIP_URL_CACHE, os.path.basename(url))
    if os.path.isfile(target):
        return target, pretrained
    if not download:
        raise FileNotFoundError(f"open_clip:{model}/{tag} is not at {target}; pass --download_clip 1 to download it")
    return open_clip.pretrained.download_pretrained_from_url(url, cache_dir=OPEN_CLIP_URL_CACHE), pretrained


def open_clip_library_model(name, download):
    """(the open_clip model of `name` with its weights, CLIPConfig)."""
    open_clip = require("open_clip", f"--pretrained_clip_name {name}")
    model, tag = split_open_clip_name(name)
    model_cfg, preprocess = open_clip_model_config(open_clip, model)
    if tag is None:
        library = open_clip.create_model(model)
    else:
        path, pretrained = open_clip_weights_file(open_clip, model, tag, download)
        preprocess = pretrained or preprocess
        quick_gelu = bool(pretrained.get("quick_gelu") or model_cfg.get("quick_gelu"))
        model_cfg = {**model_cfg, "quick_gelu": quick_gelu}
        library = open_clip.create_model(model, pretrained=path, force_quick_gelu=quick_gelu)
    mean = preprocess.get("mean", OPENAI_IMAGE_MEAN)
    std = preprocess.get("std", OPENAI_IMAGE_STD)
    return library.eval(), config_from_open_clip(open_clip, model_cfg, mean, std)


def open_clip_to_openai(library):
    """An open_clip CLIP's state dict in OpenAI's keys: the same names, fp32, without open_clip's
    extras (a SigLIP `logit_bias` has no place and is refused when the models are compared)."""
    return {k: v.float() for k, v in library.state_dict().items()}


# --- Hugging Face ------------------------------------------------------------------------------------

def hub_file(repo, filename, download):
    """A file of a Hugging Face hub repository through the library's cache (downloaded when allowed).
    A `.bin` name is looked for as `.safetensors` first, as open_clip does."""
    hub = require("huggingface_hub", "downloading from the Hugging Face hub")
    errors = importlib.import_module("huggingface_hub.errors")
    names = [filename.removesuffix(".bin") + ".safetensors", filename] if filename.endswith(".bin") else [filename]
    for candidate in names:
        try:
            return hub.hf_hub_download(repo, candidate, local_files_only=not download)
        except errors.EntryNotFoundError as err:  # offline misses are EntryNotFoundErrors too
            error = err
        except (OSError, errors.HfHubHTTPError) as err:  # no such repository, no connection, ...
            raise RuntimeError(f"could not download {repo}/{candidate} from the Hugging Face hub: {err}") from err
    if not download:
        raise FileNotFoundError(f"{repo}/{filename} is not in the Hugging Face cache; pass --download_clip 1 "
                                "to download it") from error
    raise RuntimeError(f"could not download {repo}/{filename} from the Hugging Face hub: {error}") from error


def hf_source(name):
    return name[len("hf:"):]


def hf_config(name, download):
    """The transformers config of `hf:FOLDER_OR_ID` (CLIPConfig or XCLIPConfig)."""
    transformers = require("transformers", f"--pretrained_clip_name {name}")
    source = hf_source(name)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=not download)
    except OSError as err:
        if os.path.isdir(source):
            what = "no config.json in the folder"
        elif download:
            what = "could not download its config"
        else:
            what = "not in the Hugging Face cache; pass --download_clip 1 to download it"
        reason = (str(err).splitlines() or [""])[0]
        raise FileNotFoundError(f"--pretrained_clip_name {name}: {what} ({reason})") from err
    if config.model_type not in ("clip", "xclip"):
        raise ValueError(f"--pretrained_clip_name {name} is a {config.model_type} model; CLIPModel and XCLIPModel "
                         "are supported")
    return config


def config_from_hf(config, mean=OPENAI_IMAGE_MEAN, std=OPENAI_IMAGE_STD):
    """CLIPConfig of a transformers CLIPConfig / XCLIPConfig, refusing what the towers cannot build."""
    text, vision = config.text_config, config.vision_config
    for tower, name in ((text, "text"), (vision, "vision")):
        if tower.intermediate_size != 4 * tower.hidden_size or tower.layer_norm_eps != 1e-5:
            raise ValueError(f"the {name} tower's MLP is not 4x its width or its LayerNorm eps is not 1e-5: "
                             "not OpenAI's CLIP block")
    if text.hidden_act != vision.hidden_act or text.hidden_act not in HF_ACTIVATIONS:
        raise ValueError(f"activations {text.hidden_act}/{vision.hidden_act}: one of "
                         f"{', '.join(HF_ACTIVATIONS)} in both towers is supported")
    if text.vocab_size != 49408:
        raise ValueError(f"a text vocabulary of {text.vocab_size} tokens is not CLIP's BPE (49408)")
    return CLIPConfig(config.projection_dim, vision.image_size, vision.num_hidden_layers, vision.hidden_size,
                      vision.patch_size, text.max_position_embeddings, text.vocab_size, text.hidden_size,
                      text.num_attention_heads, text.num_hidden_layers, vision_heads=vision.num_attention_heads,
                      activation=HF_ACTIVATIONS[text.hidden_act], image_mean=tuple(mean), image_std=tuple(std))


def hf_image_statistics(name, download):
    """(mean, std) from the model's preprocessor_config.json when it has one, else OpenAI's."""
    source = hf_source(name)
    path = os.path.join(source, "preprocessor_config.json")
    if not os.path.isdir(source):
        try:
            path = hub_file(source, "preprocessor_config.json", download)
        except (FileNotFoundError, RuntimeError):
            path = None
    if not path or not os.path.isfile(path):
        return OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return tuple(saved.get("image_mean", OPENAI_IMAGE_MEAN)), tuple(saved.get("image_std", OPENAI_IMAGE_STD))


def hf_library_model(name, download):
    """(the transformers CLIPModel / XCLIPModel of `hf:...` with its weights, its config)."""
    transformers = require("transformers", f"--pretrained_clip_name {name}")
    config = hf_config(name, download)
    model_class = transformers.XCLIPModel if config.model_type == "xclip" else transformers.CLIPModel
    library = model_class.from_pretrained(hf_source(name), local_files_only=not download,
                                          torch_dtype=torch.float32, attn_implementation="eager")
    return library.eval(), config


# --- Checked conversion -----------------------------------------------------------------------------

def probe_inputs(config, frames=None, seed=0):
    """A random image batch [2, 3, R, R] (or video [1, T, 3, R, R]) and two texts [2, context] of
    SOT, random tokens, EOT and zero padding."""
    generator = torch.Generator().manual_seed(seed)
    R, L = config.image_resolution, config.context_length
    shape = (1, frames, 3, R, R) if frames else (2, 3, R, R)
    images = torch.randn(shape, generator=generator)
    texts = torch.zeros(2, L, dtype=torch.long)
    for row, length in enumerate((min(5, L - 2), min(9, L - 2))):
        texts[row, 0], texts[row, length + 1] = 49406, 49407
        texts[row, 1:length + 1] = torch.randint(1, 49406, (length,), generator=generator)
    return images, texts


def check_close(ours, theirs, what, name):
    """Refuse a conversion whose outputs differ from the library's beyond PROBE_TOLERANCE."""
    error = (ours - theirs).abs().max().item() / max(theirs.abs().max().item(), 1e-6)
    if not error <= PROBE_TOLERANCE:
        raise ValueError(f"--pretrained_clip_name {name}: the converted model's {what} differ from the library's "
                         f"(relative error {error:.2e}); its architecture is not one this project builds")
    logger.info("%s: converted %s match the library's (relative error %.1e)", name, what, error)


def hf_pooled(out):
    """transformers' get_*_features: a tensor (v4), or an output whose pooler_output holds it (v5)."""
    return out if torch.is_tensor(out) else out.pooler_output


def image_text_features(library):
    """The library's image and text features: (images -> [N, D], texts -> [N, D])."""
    if hasattr(library, "get_image_features"):  # transformers
        return (lambda x: hf_pooled(library.get_image_features(pixel_values=x)),
                lambda t: hf_pooled(library.get_text_features(input_ids=t)))
    return library.encode_image, library.encode_text


@torch.no_grad()
def check_clip(state_dict, config, library, name):
    """Build our CLIP from the converted weights and compare image and text features on probes."""
    try:
        ours = build_clip(state_dict, config=config).eval()
    except RuntimeError as err:  # load_state_dict: keys or shapes OpenAI's CLIP does not have
        raise ValueError(f"--pretrained_clip_name {name}: its weights do not fit OpenAI's CLIP layout: {err}") from err
    images, texts = probe_inputs(config)
    encode_image, encode_text = image_text_features(library)
    check_close(ours.encode_image(images), encode_image(images), "image features", name)
    check_close(ours.encode_text(texts), encode_text(texts), "text features", name)


@torch.no_grad()
def check_xclip(state_dict, config, library, name):
    """Build our X-CLIP from the converted weights and compare the video-to-text logits on a probe."""
    from modules.xclip import XCLIP, xclip_config_from_state_dict, load_xclip_weights
    ours = XCLIP(xclip_config_from_state_dict(state_dict, clip_config=config)).eval()
    load_xclip_weights(ours, state_dict)
    video, texts = probe_inputs(config, frames=ours.xclip_config.num_frames)
    theirs = library(input_ids=texts, pixel_values=video).logits_per_video  # (1, 2)
    check_close(ours(video, texts), theirs, "video-text logits", name)


def load_pretrained_clip(name, download=False):
    """The weights of an open_clip or Hugging Face CLIP (`open_clip:...`, `hf:...`) converted into
    this project's layout, checked against the library's forward. Returns a PretrainedCLIP."""
    if name.startswith("open_clip:"):
        library, config = open_clip_library_model(name, download)
        state, xclip = open_clip_to_openai(library), False
    else:
        library, hf = hf_library_model(name, download)
        config = config_from_hf(hf, *hf_image_statistics(name, download))
        xclip = hf.model_type == "xclip"
        convert = hf_xclip_to_original if xclip else hf_clip_to_openai
        state = {k: v.float() for k, v in convert(library.state_dict()).items()}
    (check_xclip if xclip else check_clip)(state, config, library, name)
    return PretrainedCLIP(state, config, xclip)


def describe_pretrained_clip(name, download=False):
    """The CLIPConfig of `open_clip:...` / `hf:...` from the library's config alone (no weights
    read), for the start-up checks."""
    if name.startswith("open_clip:"):
        open_clip = require("open_clip", f"--pretrained_clip_name {name}")
        model, _ = split_open_clip_name(name)
        model_cfg, preprocess = open_clip_model_config(open_clip, model)
        return config_from_open_clip(open_clip, model_cfg, preprocess.get("mean", OPENAI_IMAGE_MEAN),
                                     preprocess.get("std", OPENAI_IMAGE_STD))
    return config_from_hf(hf_config(name, download))
