"""Weights of other CLIP implementations in this project's layouts: Hugging Face `CLIPModel` to
OpenAI's CLIP keys, Hugging Face `XCLIPModel` to the original X-CLIP's keys. Pure functions on
state dicts; `modules/clip_sources.py` loads the libraries' models and checks the results.

Hugging Face splits CLIP's fused attention in-projection into q/k/v projections, names the norms
`layer_norm1/2`, the MLP `fc1/fc2`, and keeps the projections as `nn.Linear` weights ([D, W], the
transpose of OpenAI's `proj` [W, D]). Every key of the source must be used: a key left over means
an architecture this project does not build, and is an error rather than silently dropped.
"""
import torch

# Per-block renames, Hugging Face -> OpenAI (suffixes after the block prefix).
HF_BLOCK_RENAMES = {
    "self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.", "layer_norm2.": "ln_2.",
    "message_fc.": "message_fc.", "message_ln.": "message_ln.", "message_attn.out_proj.": "message_attn.out_proj.",
}
HF_FUSED_ATTENTIONS = {"self_attn": "attn", "message_attn": "message_attn"}  # q/k/v -> in_proj
HF_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # not weights


class Keys:
    """A source state dict consumed key by key; `leftover()` lists what no rule used."""

    def __init__(self, state_dict):
        self.state = {k: v for k, v in state_dict.items() if k not in HF_BUFFERS}

    def take(self, key):
        if key not in self.state:
            raise ValueError(f"the weights lack {key}: not a complete Hugging Face model of this kind")
        return self.state.pop(key)

    def take_prefix(self, prefix):
        """Every remaining key under `prefix` -> {suffix: tensor}, removed from the source."""
        found = [k for k in self.state if k.startswith(prefix)]
        return {k[len(prefix):]: self.state.pop(k) for k in found}

    def leftover(self):
        return sorted(self.state)


def layer_count(state_dict, prefix):
    """Number of blocks `<prefix><i>.` in a state dict."""
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def convert_hf_blocks(keys, source_prefix, target_prefix, layers, out):
    """Blocks `<source_prefix><i>.` (Hugging Face) -> `<target_prefix><i>.` (OpenAI) into `out`."""
    for i in range(layers):
        block = keys.take_prefix(f"{source_prefix}{i}.")
        target = f"{target_prefix}{i}."
        for source_name, target_name in HF_FUSED_ATTENTIONS.items():
            if f"{source_name}.q_proj.weight" not in block:
                continue
            for kind in ("weight", "bias"):
                q, k, v = (block.pop(f"{source_name}.{p}_proj.{kind}") for p in "qkv")
                out[f"{target}{target_name}.in_proj_{kind}"] = torch.cat([q, k, v])  # (3W, W) / (3W,)
        for suffix, tensor in block.items():
            renamed = next((target + new + suffix[len(old):] for old, new in HF_BLOCK_RENAMES.items()
                            if suffix.startswith(old)), None)
            if renamed is None:
                raise ValueError(f"{source_prefix}{i}.{suffix} has no counterpart in OpenAI's CLIP block")
            out[renamed] = tensor


def convert_hf_text(keys, out):
    """The text tower of a Hugging Face CLIP / X-CLIP (`text_model.*`, `text_projection`) into `out`."""
    out["token_embedding.weight"] = keys.take("text_model.embeddings.token_embedding.weight")
    out["positional_embedding"] = keys.take("text_model.embeddings.position_embedding.weight")
    convert_hf_blocks(keys, "text_model.encoder.layers.", "transformer.resblocks.",
                      layer_count(keys.state, "text_model.encoder.layers."), out)
    out["ln_final.weight"] = keys.take("text_model.final_layer_norm.weight")
    out["ln_final.bias"] = keys.take("text_model.final_layer_norm.bias")
    out["text_projection"] = keys.take("text_projection.weight").t().contiguous()  # (W, D)
    out["logit_scale"] = keys.take("logit_scale")


def convert_hf_vision(keys, pre_norm, out):
    """The image tower (`vision_model.*`, `visual_projection`) into `visual.*` of `out`. `pre_norm`
    is the stem norm's name: `pre_layrnorm` in CLIPModel (sic), `pre_layernorm` in XCLIPModel."""
    out["visual.class_embedding"] = keys.take("vision_model.embeddings.class_embedding")
    out["visual.conv1.weight"] = keys.take("vision_model.embeddings.patch_embedding.weight")
    out["visual.positional_embedding"] = keys.take("vision_model.embeddings.position_embedding.weight")
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = keys.take(f"vision_model.{pre_norm}.{kind}")
        out[f"visual.ln_post.{kind}"] = keys.take(f"vision_model.post_layernorm.{kind}")
    convert_hf_blocks(keys, "vision_model.encoder.layers.", "visual.transformer.resblocks.",
                      layer_count(keys.state, "vision_model.encoder.layers."), out)
    out["visual.proj"] = keys.take("visual_projection.weight").t().contiguous()  # (W, D)


def finish(keys, out, what):
    leftover = keys.leftover()
    if leftover:
        shown = ", ".join(leftover[:8]) + (" ..." if len(leftover) > 8 else "")
        raise ValueError(f"{what} holds weights this project has no place for ({len(leftover)}): {shown}")
    return out


def hf_clip_to_openai(state_dict):
    """A Hugging Face `CLIPModel` state dict -> OpenAI CLIP's keys (ViT image tower)."""
    if "vision_model.embeddings.patch_embedding.weight" not in state_dict:
        raise ValueError("not a Hugging Face CLIPModel with a ViT image tower (no "
                         "vision_model.embeddings.patch_embedding.weight)")
    keys, out = Keys(state_dict), {}
    convert_hf_text(keys, out)
    convert_hf_vision(keys, "pre_layrnorm", out)
    return finish(keys, out, "the Hugging Face CLIPModel")


def hf_xclip_to_original(state_dict):
    """A Hugging Face `XCLIPModel` state dict -> the original X-CLIP's keys (CLIP's plus `mit.*`,
    `prompts_*`, the blocks' `message_*`)."""
    if "mit.position_embedding" not in state_dict:
        raise ValueError("not a Hugging Face XCLIPModel (no mit.position_embedding)")
    keys, out = Keys(state_dict), {}
    convert_hf_text(keys, out)
    convert_hf_vision(keys, "pre_layernorm", out)
    out["mit.positional_embedding"] = keys.take("mit.position_embedding")  # (1, T, D)
    convert_hf_blocks(keys, "mit.encoder.layers.", "mit.resblocks.", layer_count(keys.state, "mit.encoder.layers."), out)
    out["prompts_visual_ln.weight"] = keys.take("prompts_visual_layernorm.weight")
    out["prompts_visual_ln.bias"] = keys.take("prompts_visual_layernorm.bias")
    out["prompts_visual_proj"] = keys.take("prompts_visual_projection")  # (W, D) in both layouts
    out["prompts_generator.alpha"] = keys.take("prompts_generator.alpha")
    out["prompts_generator.norm.weight"] = keys.take("prompts_generator.layernorm.weight")
    out["prompts_generator.norm.bias"] = keys.take("prompts_generator.layernorm.bias")
    for suffix, tensor in keys.take_prefix("prompts_generator.decoder.").items():
        out["prompts_generator.decoder." + suffix] = tensor  # same names: cross_attn.*, norm1/3, mlp.0/3
    return finish(keys, out, "the Hugging Face XCLIPModel")
