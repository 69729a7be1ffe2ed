"""ComKD-CLIP's EduAttention, in a reading whose shapes meet.

The paper (Chen et al., 2024; no public code) writes
    Q = FC(w_t)          the teacher's text features, one per class      [N, C]
    K = V = FC(u_s)      the student's image features, one per image     [B, C]
    f_att = softmax(Q Kᵀ / √C) · V                                       [N, C]
    f_e = u_s + α · f_att,  α learnable, initialised to 0                (Eq. 7)
and computes the logits and the KL from f_e. Taken literally f_att has one row per *class* while
Eq. 7 adds it to the *image* features [B, d]: the shapes do not meet.

Our reading keeps the paper's intent — the student's image features absorb how the teacher's class
texts relate to them — and its Eq. 7, by letting each image query the class vectors:

    q = FC_q(u_s)                                   [B, C]   one query per image
    k = v = FC_kv(W)                                [N, C]   the class vectors (the teacher's w_t),
                                                             one shared FC for keys and values, as K = V
    f_att = FC_o(softmax(q kᵀ / √C) · v)            [B, d]   a mixture of class texts per image,
                                                             brought back to the feature width d
    f_e = u_s + α · f_att                           [B, d]   Eq. 7, α = 0 at the start

Design decisions:
- α starts at exactly 0, so u_s + 0·f_att = u_s bit for bit: a ComKD student starts as a PromptKD
  student (tested). f_e is not re-normalised (the paper does not say so, and re-normalising would
  break that identity).
- f_e depends on the class set W: scoring base classes queries W_base, novel classes W_novel, which
  is how the base-to-novel protocol already scores a student. Inference therefore returns u_s and
  the classifier (`Student.logits`) applies EduAttention with the class set being scored.
- The module belongs to the student: it trains with the prompts and the projector and is saved in
  the student artifact (its width C recorded in the JSON sidecar).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EduAttention(nn.Module):
    """Args:
    dim: d, the width of the student's projected features and of the class vectors.
    width: C, the attention width.
    """

    def __init__(self, dim: int, width: int):
        super().__init__()
        if width < 1:
            raise ValueError(f"EduAttention needs a width C ≥ 1, got {width}.")
        self.width = width
        self.query = nn.Linear(dim, width)  # FC_q: image features → queries
        self.key_value = nn.Linear(dim, width)  # FC_kv: class vectors → keys = values
        self.out = nn.Linear(width, dim)  # FC_o: back to the feature width
        self.alpha = nn.Parameter(torch.zeros(()))  # α, learnable, 0 at the start

    def forward(self, features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """features u_s [B, d], class vectors W [N, d] → f_e [B, d]."""
        features = features.float()
        q = self.query(features)  # shape = [B, C]
        kv = self.key_value(class_vectors.float())  # shape = [N, C]
        attention = torch.softmax(q @ kv.t() / math.sqrt(self.width), dim=-1)  # shape = [B, N]
        return features + self.alpha * self.out(attention @ kv)
