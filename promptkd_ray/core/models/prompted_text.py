"""The text tower of an open_clip CLIP, optionally with IVLP text prompts (PromptSRC / PromptKD teacher).

With prompts (depth ≥ 1): a learned context `ctx` [n_ctx, width] replaces the token embeddings at
positions 1 … n_ctx (right after SOS) of the prompt text "{ctx_init} {classname}." — `ctx` starts as
the token embeddings of `ctx_init` ("a photo of a") when that has exactly n_ctx tokens, else
N(0, 0.02) with "X X … X" placeholders; before text blocks 1 … depth-1 positions 1 … n_ctx are
replaced by that block's deep prompt. The feature is taken at the EOT token (argmax of the token
ids), after `ln_final`, `@ text_projection`.

Without prompts (depth 0) it is CLIP's zero-shot text encoder over one or more templates.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .prompted_vit import PROMPT_INIT_STD, replace_tokens, run_prompted_blocks

DEFAULT_CTX_INIT = "a photo of a"


def clean_classname(name: str) -> str:
    return name.replace("_", " ")


class PromptedTextEncoder(nn.Module):
    """Wraps the text parts of an open_clip `CLIP` (token_embedding, positional_embedding,
    transformer, ln_final, text_projection, attn_mask)."""

    def __init__(
        self, clip: nn.Module, tokenizer, n_ctx: int = 4, depth: int = 0, ctx_init: str = DEFAULT_CTX_INIT
    ):
        super().__init__()
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(clip, name):
                raise TypeError(
                    f"Text prompting needs an open_clip CLIP with a built-in text tower; missing {name}."
                )
        layers = len(clip.transformer.resblocks)
        if depth < 0 or depth > layers:
            raise ValueError(f"text prompt depth must be in 0…{layers}, got {depth}.")
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.depth = depth
        width = clip.token_embedding.weight.shape[1]
        self.ctx_init = ctx_init
        if depth > 0:
            init_tokens = self._ctx_init_tokens(ctx_init)
            if init_tokens is not None and init_tokens.numel() == n_ctx:
                with torch.no_grad():
                    init = self.token_embedding(init_tokens).float().clone()
                self.prompt_prefix = ctx_init
            else:
                init = torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD)
                self.prompt_prefix = " ".join(["X"] * n_ctx)
            self.ctx = nn.Parameter(init)
            self.deep_prompts = nn.ParameterList(
                [
                    nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_INIT_STD))
                    for _ in range(depth - 1)
                ]
            )
        else:
            self.ctx = None
            self.prompt_prefix = None
            self.deep_prompts = nn.ParameterList()

    def _ctx_init_tokens(self, text: str) -> torch.Tensor | None:
        if not text:
            return None
        ids = self.tokenizer([text])[0]
        eot = int(ids.argmax())
        return ids[1:eot]  # drop SOS … EOT

    def prompt_parameters(self) -> list[nn.Parameter]:
        return ([self.ctx] if self.ctx is not None else []) + list(self.deep_prompts)

    def prompt_texts(self, classnames: Sequence[str]) -> list[str]:
        """The texts the prompted encoder tokenizes: "{prefix} {classname}."."""
        return [f"{self.prompt_prefix} {clean_classname(c)}." for c in classnames]

    def encode_prompted(self, classnames: Sequence[str]) -> torch.Tensor:
        """[N] class names → unnormalised prompted text features [N, d]."""
        if self.ctx is None:
            raise RuntimeError("This text encoder has no prompts (depth 0); use encode_templates.")
        tokens = self.tokenizer(self.prompt_texts(classnames)).to(self.ctx.device)
        x = self.token_embedding(tokens)  # shape = [N, L, width]
        ctx = self.ctx.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = replace_tokens(x, ctx, start=1)
        return self._encode_embeddings(x, tokens, self.deep_prompts)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Plain CLIP text encoding of token ids [N, L] → unnormalised features [N, d]."""
        return self._encode_embeddings(self.token_embedding(tokens), tokens, [])

    def encode_templates(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Zero-shot: for each class, the L2-normalised mean of its L2-normalised template features."""
        device = self.positional_embedding.device
        per_template = []
        for template in templates:
            tokens = self.tokenizer([template.format(clean_classname(c)) for c in classnames]).to(device)
            per_template.append(F.normalize(self.encode_tokens(tokens), dim=-1))
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)

    def _encode_embeddings(self, x: torch.Tensor, tokens: torch.Tensor, deep_prompts) -> torch.Tensor:
        x = x + self.positional_embedding.to(x.dtype)
        mask = self.attn_mask
        if mask is not None:
            mask = mask[: x.shape[1], : x.shape[1]]
        x = run_prompted_blocks(self.transformer, x, deep_prompts, self.n_ctx, start=1, attn_mask=mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # EOT token
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection
