"""Deep visual prompts around open_clip's `VisionTransformer` (PromptKD / PromptSRC / VPT-deep).

Placement, exactly as the authors' code (docs/protocol.md):
- shallow prompts `shallow_prompt` [n_ctx, width] are appended *after* the patch tokens, after the
  positional embedding was added and before `ln_pre`; they get no positional embedding;
- before block i = 1 … depth-1 the last n_ctx tokens are replaced by `deep_prompts[i-1]`;
- after the last prompted block the prompt tokens stay in the sequence; the CLS token is pooled.
With depth 0 the module computes exactly open_clip's `VisionTransformer.forward`.

Relies on the internals of open_clip 3.3.0 (`conv1`, `class_embedding`, `positional_embedding`,
`patch_dropout`, `ln_pre`, `transformer.resblocks`, `_pool`, `proj`), hence the pinned version.
"""

from __future__ import annotations

import torch
from torch import nn

PROMPT_INIT_STD = 0.02


class PromptedVisionTransformer(nn.Module):
    """Wraps (does not copy) an open_clip VisionTransformer and adds trainable visual prompts.

    Args:
        visual: open_clip `VisionTransformer` with CLS-token pooling.
        n_ctx: prompt tokens per layer.
        depth: number of prompted layers; 0 = no prompts, 1 = shallow only, d = shallow + d-1 deep.
    """

    def __init__(self, visual: nn.Module, n_ctx: int = 4, depth: int = 9):
        super().__init__()
        _check_supported(visual)
        layers = len(visual.transformer.resblocks)
        if depth < 0 or depth > layers:
            raise ValueError(
                f"prompt depth must be in 0…{layers} for this {layers}-layer tower, got {depth}."
            )
        if depth > 0 and n_ctx < 1:
            raise ValueError(f"n_ctx must be ≥ 1 when prompts are used, got {n_ctx}.")
        self.visual = visual
        self.n_ctx = n_ctx
        self.depth = depth
        width = visual.conv1.out_channels
        self.width = width
        self.output_dim = visual.output_dim
        if depth > 0:
            self.shallow_prompt = nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD))
            self.deep_prompts = nn.ParameterList(
                [
                    nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD))
                    for _ in range(depth - 1)
                ]
            )
        else:
            self.shallow_prompt = None
            self.deep_prompts = nn.ParameterList()

    def prompt_parameters(self) -> list[nn.Parameter]:
        return ([self.shallow_prompt] if self.shallow_prompt is not None else []) + list(self.deep_prompts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (CLIP-normalised) → pooled, projected features [B, output_dim]."""
        v = self.visual
        x = v.conv1(images)  # shape = [B, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # shape = [B, grid ** 2, width]
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)  # shape = [B, grid ** 2 + 1, width]
        x = x + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        if self.shallow_prompt is not None:
            prompt = self.shallow_prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x, prompt], dim=1)  # shape = [B, grid ** 2 + 1 + n_ctx, width]
        x = v.ln_pre(x)
        x = run_prompted_blocks(v.transformer, x, self.deep_prompts, self.n_ctx, start=-self.n_ctx)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled


def run_prompted_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    deep_prompts,
    n_ctx: int,
    start: int,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run open_clip `Transformer` blocks on batch-first x [B, L, W], replacing the n_ctx tokens
    at `start` (negative = from the end; 1 = right after SOS) with deep_prompts[i-1] before block i."""
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(transformer.resblocks):
        if 1 <= i <= len(deep_prompts):
            prompt = deep_prompts[i - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = replace_tokens(x, prompt, start)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def replace_tokens(x: torch.Tensor, prompt: torch.Tensor, start: int) -> torch.Tensor:
    """x [B, L, W] with tokens start … start+n_ctx-1 replaced by prompt [B, n_ctx, W]."""
    n_ctx = prompt.shape[1]
    if start < 0:
        return torch.cat([x[:, : x.shape[1] - n_ctx], prompt], dim=1)
    return torch.cat([x[:, :start], prompt, x[:, start + n_ctx :]], dim=1)


def _check_supported(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "_pool")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise TypeError(
            f"Prompting needs an open_clip VisionTransformer; {type(visual).__name__} lacks {missing}."
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise TypeError("Prompting supports CLS-token pooling only (pool_type='tok', no attentional pooler).")
