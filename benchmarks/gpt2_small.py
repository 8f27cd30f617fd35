#!/usr/bin/env python3
"""GPT-2 small on one machine: builds GPT-2 small's shape in PyTorch (vocabulary 50257, 768 wide, 12 blocks of
12 heads, learned positions, the output layer tied to the token embedding; 124M parameters) at random
initialization, exports it with tools/export_torch.py and writes a batch of random token sequences.

    python3 benchmarks/gpt2_small.py --out DIR [--context 256] [--batch 8]
    /usr/bin/time -v natgrad solve --model DIR/model.json --weights DIR/weights.safetensors \\
        --data DIR/data.safetensors --cg-max-iters 5 --output DIR/d.safetensors --report DIR/report.json
    natgrad info --model DIR/model.json --batch 8        # the memory estimate to compare with the peak RSS

The blocks are GPT-2's (pre-norm, GELU in its tanh form, 4x MLP) written with nn.MultiheadAttention, which
holds the same parameters as GPT-2's fused c_attn / c_proj (transposed)."""
import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from export_torch import export_data, export_model  # noqa: E402


class Block(nn.Module):
    def __init__(self, d, heads, T):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, T, vocab=50257, d=768, layers=12, heads=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Parameter(0.01 * torch.randn(T, d))
        self.h = nn.Sequential(*[Block(d, heads, T) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(self.ln_f(self.h(self.wte(idx) + self.wpe)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    with torch.no_grad():
        model = GPT2(a.context).eval()
        for p in model.parameters():  # GPT-2's initialization scale, so the logits are not saturated
            if p.dim() > 1:
                p.normal_(0, 0.02)
    print(f"GPT-2 small, T = {a.context}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    export_model(model, [a.context], "categorical", a.out)
    x = torch.randint(0, 50257, (a.batch, a.context))
    export_data(os.path.join(a.out, "data.safetensors"), x, torch.roll(x, -1, 1))
    print(f"wrote {a.out}/model.json, weights.safetensors, data.safetensors ({a.batch} sequences)")
