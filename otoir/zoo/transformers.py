"""Small transformer encoders with hand-written attention (no ``nn.MultiheadAttention``).

Attention is spelled out op by op so that the exported graph shows the head structure the
pruning analysis must follow: separate q/k/v Linears, Reshape to (B, T, H, D), Transpose,
MatMul, Softmax, MatMul, Transpose, Reshape, output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BertLike", "EncoderLayer", "SelfAttention", "ViTLike"]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``query``/``key``/``value`` Linears.

    Args:
        hidden: Model width.
        heads: Number of heads (must divide ``hidden``).
        dropout: Dropout on the attention probabilities.
    """

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not a multiple of heads={heads}")
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attends ``x`` of shape (B, T, hidden) to itself."""
        b, t, _ = x.shape
        q = self.query(x).reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.key(x).reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.value(x).reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (BERT): ``LN(x + attn(x))``, ``LN(h + FFN(h))``.

    Args:
        hidden: Model width.
        heads: Attention heads.
        ffn: Feed-forward width.
        dropout: Dropout rate after attention and FFN.
    """

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads, dropout)
        self.attn_norm = nn.LayerNorm(hidden)
        self.intermediate = nn.Linear(hidden, ffn)
        self.output = nn.Linear(ffn, hidden)
        self.out_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the layer on (B, T, hidden)."""
        h = self.attn_norm(x + self.dropout(self.attention(x)))
        return self.out_norm(h + self.dropout(self.output(F.gelu(self.intermediate(h)))))


class BertLike(nn.Module):
    """A tiny BERT: token + learned position embeddings, LayerNorm, post-LN encoder layers.

    Input: int64 token ids (B, T), T ≤ ``max_len``. Output: class logits from the first token.

    Args:
        vocab: Vocabulary size.
        hidden: Model width.
        heads: Attention heads.
        ffn: Feed-forward width.
        layers: Encoder layers.
        max_len: Number of position embeddings.
        num_classes: Classifier outputs.
        dropout: Dropout rate.
    """

    def __init__(
        self,
        vocab: int = 100,
        hidden: int = 32,
        heads: int = 4,
        ffn: int = 64,
        layers: int = 2,
        max_len: int = 32,
        num_classes: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_len, hidden)
        self.emb_norm = nn.LayerNorm(hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout) for _ in range(layers))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Classifies token ids (B, T)."""
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.emb_dropout(self.emb_norm(self.word_embeddings(ids) + self.position_embeddings(pos)))
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x[:, 0])


class ViTLike(nn.Module):
    """A tiny ViT: Conv patch embedding, class token, position embedding, encoder layers, head.

    Input 3×32×32 with 8×8 patches (16 patches + class token). The encoder layers are the
    post-LN :class:`EncoderLayer` of :class:`BertLike`; the head reads the class token.

    Args:
        image: Image side.
        patch: Patch side.
        hidden: Model width.
        heads: Attention heads.
        ffn: Feed-forward width.
        layers: Encoder layers.
        num_classes: Head outputs.
        in_channels: Input channels.
        dropout: Dropout rate.
    """

    def __init__(
        self,
        image: int = 32,
        patch: int = 8,
        hidden: int = 32,
        heads: int = 4,
        ffn: int = 64,
        layers: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        n = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, hidden, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, hidden))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifies images (B, C, H, W)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x[:, 0]))
