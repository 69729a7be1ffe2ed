"""An independent CLIP forward written from docs/protocol.md and the CLIP paper, on raw OpenAI-named
weights (a state dict), for tests: no open_clip module is called. Prompts are placed as the authors
do: visual shallow prompts appended after the patch tokens (after the positional embedding, before
ln_pre), deep prompts replacing the last n_ctx tokens before blocks 1…depth-1; text context at
positions 1…n_ctx (after SOS), deep text prompts replacing those positions; EOT pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm(x, sd, prefix, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def attention(x, sd, prefix, heads, mask=None):
    """x [B, L, W] → multi-head self-attention with packed in_proj (OpenAI layout)."""
    B, L, W = x.shape
    qkv = x @ sd[prefix + ".in_proj_weight"].t() + sd[prefix + ".in_proj_bias"]
    q, k, v = qkv.split(W, dim=-1)
    hd = W // heads

    def split(t):
        return t.reshape(B, L, heads, hd).transpose(1, 2)  # [B, H, L, hd]

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / hd**0.5
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, W)
    return out @ sd[prefix + ".out_proj.weight"].t() + sd[prefix + ".out_proj.bias"]


def block(x, sd, prefix, heads, mask=None):
    x = x + attention(layer_norm(x, sd, prefix + ".ln_1"), sd, prefix + ".attn", heads, mask)
    h = layer_norm(x, sd, prefix + ".ln_2")
    h = quick_gelu(h @ sd[prefix + ".mlp.c_fc.weight"].t() + sd[prefix + ".mlp.c_fc.bias"])
    return x + h @ sd[prefix + ".mlp.c_proj.weight"].t() + sd[prefix + ".mlp.c_proj.bias"]


def reference_image_features(images, sd, heads, prompts=None, prefix="visual"):
    """images [B, 3, H, W]; sd: OpenAI-named weights; prompts: list [shallow, deep_1, …] of [n_ctx, W].
    Returns the projected CLS feature [B, d] (not normalised)."""
    p = prefix + "."
    x = F.conv2d(images, sd[p + "conv1.weight"], stride=sd[p + "conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)  # [B, grid², W]
    cls = sd[p + "class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[p + "positional_embedding"]
    prompts = prompts or []
    if prompts:
        x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = layer_norm(x, sd, p + "ln_pre")
    n_layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(p + "transformer.resblocks."))
    for i in range(n_layers):
        if 1 <= i < len(prompts):
            n_ctx = prompts[i].shape[0]
            x = torch.cat([x[:, :-n_ctx], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x, sd, f"{p}transformer.resblocks.{i}", heads)
    return layer_norm(x[:, 0], sd, p + "ln_post") @ sd[p + "proj"]


def reference_text_features(tokens, sd, heads, ctx=None, deep=(), prefix=""):
    """tokens [N, L] ids; ctx [n_ctx, W] replaces positions 1…n_ctx; deep[i-1] before block i.
    Returns unnormalised features at the EOT token (argmax id) @ text_projection."""
    x = sd[prefix + "token_embedding.weight"][tokens]
    if ctx is not None:
        n = ctx.shape[0]
        x = torch.cat([x[:, :1], ctx.expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
    x = x + sd[prefix + "positional_embedding"]
    L = x.shape[1]
    mask = torch.full((L, L), float("-inf")).triu(1)
    n_layers = 1 + max(
        int(k.split(".")[2 if not prefix else 3])
        for k in sd
        if k.startswith(prefix + "transformer.resblocks.")
    )
    for i in range(n_layers):
        if 1 <= i <= len(deep):
            n = deep[i - 1].shape[0]
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x, sd, f"{prefix}transformer.resblocks.{i}", heads, mask)
    x = layer_norm(x, sd, prefix + "ln_final")
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ sd[prefix + "text_projection"]
