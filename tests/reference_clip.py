"""Plain reference forwards of CLIP written from SPEC §1, for tests."""
import torch


def layer_norm(x, sd, prefix):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[prefix + ".weight"] + sd[prefix + ".bias"]


def reference_block(x, sd, prefix, heads, causal=False, additive_mask=None):
    """Plain pre-norm block: softmax attention written out, QuickGELU MLP.
    additive_mask [B, L, L] is added to every head's scores."""
    B, L, W = x.shape
    h = layer_norm(x, sd, prefix + "ln_1")
    qkv = h @ sd[prefix + "attn.in_proj_weight"].T + sd[prefix + "attn.in_proj_bias"]
    q, k, v = qkv.split(W, dim=-1)
    split = lambda t: t.reshape(B, L, heads, W // heads).permute(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / (W // heads) ** 0.5
    if causal:
        scores = scores + torch.full((L, L), float("-inf")).triu(1)
    if additive_mask is not None:
        scores = scores + additive_mask[:, None]
    attn = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, L, W)
    x = x + attn @ sd[prefix + "attn.out_proj.weight"].T + sd[prefix + "attn.out_proj.bias"]
    h = layer_norm(x, sd, prefix + "ln_2") @ sd[prefix + "mlp.c_fc.weight"].T + sd[prefix + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ sd[prefix + "mlp.c_proj.weight"].T + sd[prefix + "mlp.c_proj.bias"]


def reference_image(sd, frames, layers=12, heads=1):
    conv = sd["visual.conv1.weight"]
    W, _, P, _ = conv.shape
    patches = frames.unfold(2, P, P).unfold(3, P, P)  # (N, 3, g, g, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(frames.shape[0], -1, 3 * P * P)
    x = patches @ conv.reshape(W, -1).T
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, W)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = layer_norm(x, sd, "visual.ln_pre")
    for i in range(layers):
        x = reference_block(x, sd, f"visual.transformer.resblocks.{i}.", heads, causal=False)
    return layer_norm(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def reference_text(sd, ids, layers=12, heads=1):
    L = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:L]
    for i in range(layers):
        x = reference_block(x, sd, f"transformer.resblocks.{i}.", heads, causal=True)
    x = layer_norm(x, sd, "ln_final")
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
