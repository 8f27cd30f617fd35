#!/usr/bin/env python3
"""Padded targets (ignore_index = -100) against PyTorch autograd in float64: two tiny sequence models
written as PyTorch users write them (an embedding and per-position linear layers; an embedding, causal
self-attention and a head; an nn.TransformerEncoder language model), trained with F.cross_entropy(logits.view(-1, V), y.view(-1)) whose default
ignore_index is -100, on batches whose targets are partly -100 (a padded tail per sequence, scattered
positions, one sequence that is all padding). natgrad's loss and gradient against PyTorch's cross_entropy and
autograd; the exact and empirical F·v against 1/M Σ_n J_nᵀ D_n H_n D_n J_n v (M the positions that count,
D_n zeroing the others, J v by the double-backward trick, H_n from the formulas); the Monte-Carlo F·v
(4000 draws) against the exact one within 5%; the damped direction's residual in PyTorch, on the whole batch
and with --curvature-batch (the curvature subset averages over its own kept positions, the gradient over the
batch's), all to 1e-10 relative. Then the errors: a batch that is all padding, and a target of -3.
Exit code 77 (ctest SKIP) when PyTorch is not installed, 1 with NATGRAD_REQUIRE_TORCH=1 (torch_oracle.py)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_oracle import Oracle, export_case, export_data, load_safetensors, to_vector  # noqa: E402  (first)
from torch_reference import flat, rel  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

oracle = Oracle()
torch.set_default_dtype(torch.float64)
IGNORE = -100


class Tagger(nn.Module):
    def __init__(self, V, E, H):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.fc = nn.Linear(E, H)
        self.out = nn.Linear(H, V)

    def forward(self, idx):
        return self.out(torch.tanh(self.fc(self.emb(idx))))


class TinyLM(nn.Module):
    def __init__(self, V, E, T):
        super().__init__()
        self.tok = nn.Embedding(V, E)
        self.pos = nn.Parameter(torch.randn(T, E) * 0.5)
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
        self.ln = nn.LayerNorm(E)
        self.head = nn.Linear(E, V)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, idx):
        h = self.tok(idx) + self.pos
        h = h + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return self.head(self.ln(h))


class EncoderLM(nn.Module):
    """The language model people write on nn.TransformerEncoder (batch_first, norm_first, gelu, a causal mask
    from nn.Transformer.generate_square_subsequent_mask), translated by the exporter into natgrad's nodes."""
    def __init__(self, V, E, T):
        super().__init__()
        self.tok = nn.Embedding(V, E)
        self.pos = nn.Parameter(torch.randn(T, E) * 0.5)
        layer = nn.TransformerEncoderLayer(E, 2, 2 * E, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(E, V)

    def forward(self, idx):
        mask = nn.Transformer.generate_square_subsequent_mask(idx.size(1))
        return self.head(self.encoder(self.tok(idx) + self.pos, mask))


def loss_of(model, x, y):
    z = model(x)
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


def masked_fvp(model, x, y, kind, vec):
    """1/M Σ_n J_nᵀ D_n H_n D_n J_n v over the positions whose target is not -100 (M of them)."""
    params = list(model.parameters())
    logits = model(x)  # [N, T, V]
    w = torch.zeros_like(logits, requires_grad=True)
    g = torch.autograd.grad(logits, params, grad_outputs=w, create_graph=True)
    u = torch.autograd.grad(g, w, grad_outputs=vec)[0]
    keep = (y != IGNORE).unsqueeze(-1).double()  # [N, T, 1]
    M = float(keep.sum())
    u = u * keep
    p = torch.softmax(logits.detach(), -1)
    if kind == "exact":  # block-diagonal over the positions: p ∘ u − p (pᵀu)
        hu = p * u - p * (p * u).sum(-1, keepdim=True)
    else:  # the stacked true-label scores of the sample: s (s · u)
        s = (p - F.one_hot(y.clamp(min=0), p.shape[-1]).double()) * keep
        hu = s * (s * u).sum((1, 2), keepdim=True)
    return flat(torch.autograd.grad(logits, params, grad_outputs=hu * keep / M))


def check(tag, model, x, y, lam=0.05, curvature=None):
    model.eval()
    d, v, common = export_case(model, [x.shape[1]], "categorical", x, y)
    vfile = os.path.join(d, "v.safetensors")
    exact = masked_fvp(model, x, y, "exact", v)
    for kind in ("exact", "empirical", "mc"):
        out = os.path.join(d, f"fv_{kind}.safetensors")
        mc = ["--mc-samples", "4000", "--seed", "3"] if kind == "mc" else []
        oracle.run("fvp", *common, "--fisher", kind, *mc, "--vector", vfile, "--output", out)
        ref = exact if kind == "mc" else masked_fvp(model, x, y, kind, v)
        oracle.check(f"{tag}: fvp {kind} vs PyTorch", rel(to_vector(model, load_safetensors(out)), ref),
                     5e-2 if kind == "mc" else 1e-10)
    # The masking is what the products are checked for: without it they differ far beyond the bound.
    everything = masked_fvp(model, x, torch.zeros_like(y), "exact", v)
    if not rel(everything, exact) > 1e-3:
        oracle.fail(f"{tag}: the padded positions change nothing; the test cannot tell")
    loss = loss_of(model, x, y)
    g = flat(torch.autograd.grad(loss, list(model.parameters())))
    for label, extra, xs, ys in [("whole batch", [], x, y)] + (
            [(f"curvature on {curvature}", ["--curvature-batch", str(curvature)], x[:curvature], y[:curvature])]
            if curvature else []):
        report = os.path.join(d, "report.json")
        oracle.run("solve", *common, *extra, "--damping", str(lam), "--cg-tol", "1e-13", "--cg-max-iters", "5000",
                   "--output", os.path.join(d, "dir.safetensors"),
                   "--save-gradient", os.path.join(d, "g.safetensors"), "--report", report)
        with open(report) as f:
            ours = json.load(f)["loss"]
        oracle.check(f"{tag} ({label}): loss vs cross_entropy(ignore_index=-100)",
                     abs(ours - float(loss)) / abs(float(loss)), 1e-10)
        oracle.check(f"{tag} ({label}): gradient vs autograd",
                     rel(to_vector(model, load_safetensors(os.path.join(d, "g.safetensors"))), g), 1e-10)
        direction = load_safetensors(os.path.join(d, "dir.safetensors"))
        dvec = [direction[n].reshape(p.shape) for n, p in model.named_parameters()]
        residual = masked_fvp(model, xs, ys, "exact", dvec) + lam * flat(dvec) - g
        oracle.check(f"{tag} ({label}): residual of the direction in PyTorch", float(residual.norm() / g.norm()),
                     1e-10)
    return d, common


torch.manual_seed(11)
N, T, V = 8, 6, 7
x = torch.randint(0, V, (N, T))
y = torch.randint(0, V, (N, T))
lengths = [6, 4, 5, 2, 6, 3, 1, 5]
for n, length in enumerate(lengths):
    y[n, length:] = IGNORE  # a padded tail
y[0, 2] = IGNORE  # and scattered positions
y[4, 0] = IGNORE
y[6, :] = IGNORE  # a sequence that is all padding
assert 0 < int((y != IGNORE).sum()) < N * T

check("embedding + linear", Tagger(V, 5, 6), x, y, curvature=5)
torch.manual_seed(12)
d, common = check("embedding + causal attention", TinyLM(V, 4, T), x, y, curvature=3)
torch.manual_seed(13)
check("nn.TransformerEncoder language model (2 layers, norm_first, gelu)", EncoderLM(V, 4, T), x, y, curvature=4)

# Errors: a batch in which nothing counts, and a negative target other than -100.
padding = os.path.join(d, "padding.safetensors")
export_data(padding, x, torch.full((N, T), IGNORE, dtype=torch.long))
args = [a if a != os.path.join(d, "data.safetensors") else padding for a in common]
oracle.expect_error("all padding", ["solve", *args, "--damping", "0.1"], "ignore index -100")
bad_target = y.clone()
bad_target[3, 1] = -3
bad = os.path.join(d, "bad.safetensors")
export_data(bad, x, bad_target)
args = [a if a != os.path.join(d, "data.safetensors") else bad for a in common]
oracle.expect_error("target -3", ["solve", *args, "--damping", "0.1"], "class label -3 of sample 3, position 1")
oracle.finish()
