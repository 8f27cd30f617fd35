#!/usr/bin/env python3
"""A tiny GPT written as ordinary nn.Module classes (as in the README), exported with tools/export_torch.py,
against PyTorch autograd as an independent oracle, in float64: token and learned position embeddings,
pre-norm blocks with nn.MultiheadAttention(batch_first=True) called as self-attention with a causal mask
buffer, a prediction at every position, loss cross_entropy(logits.view(-1, V), y.view(-1)). Variants: an
additive float mask (-inf above the diagonal) and need_weights=False, a boolean mask with PyTorch's default
need_weights=True, no mask, attention without biases, and the output layer tied to the token embedding.
For each: the gradient, the exact and empirical F·v, the damped natural-gradient direction (its residual in
PyTorch) and the top eigenvalues (against the dense F built from PyTorch's products) agree to 1e-10
relative. Then the bad inputs: a token out of the vocabulary, a sequence longer than the mask and position
table, a mask of the wrong shape, a mask that is not causal — each a one-line error.
Exit code 77 (ctest SKIP) when PyTorch is not installed, 1 with NATGRAD_REQUIRE_TORCH=1 (torch_oracle.py)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_oracle import Oracle, export_data, export_model, load_safetensors, save_safetensors  # noqa: E402  (first)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

oracle = Oracle()
run, failures = oracle.run, oracle.failures
torch.set_default_dtype(torch.float64)


class Block(nn.Module):
    def __init__(self, d, heads, T, mask, bias):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, bias=bias, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.mask_kind = mask
        if mask == "float":
            self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))
        elif mask == "bool":
            self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))

    def forward(self, x):
        h = self.ln1(x)
        if self.mask_kind == "float":
            a = self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        elif self.mask_kind == "bool":
            a = self.attn(h, h, h, attn_mask=self.mask)[0]
        else:
            a = self.attn(h, h, h)[0]
        x = x + a
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab=11, T=6, d=8, heads=2, layers=2, mask="float", bias=True, tied=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.5)
        self.blocks = nn.Sequential(*[Block(d, heads, T, mask, bias) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, idx):
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos)))


def randomize(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None:
                m.in_proj_bias.uniform_(-0.3, 0.3)
                m.out_proj.bias.uniform_(-0.3, 0.3)


cases = [("float mask", dict(mask="float")), ("bool mask, need_weights", dict(mask="bool")),
         ("no mask", dict(mask="none")), ("no biases", dict(bias=False)), ("tied embeddings", dict(tied=True))]
N, V, T = 10, 11, 6
for name, kwargs in cases:
    torch.manual_seed(5)
    model = GPT(V, T, **kwargs)
    randomize(model)
    model.eval()
    x = torch.randint(0, V, (N, T))
    y = torch.randint(0, V, (N, T))
    d, _, common = oracle.check_case(name, model, [T], "categorical", x, y, top=3)
    if kwargs.get("tied"):
        # state_dict() holds the tied tensor twice (tok.weight, head.weight): accepted when they are equal.
        state = os.path.join(d, "state.safetensors")
        save_safetensors(state, model.state_dict())
        run("solve", *common[:2], "--weights", state, *common[4:], "--cg-max-iters", "2")
        broken = dict(model.state_dict())
        broken["head.weight"] = broken["head.weight"] + 1
        save_safetensors(state, broken)
        r = run("solve", *common[:2], "--weights", state, *common[4:], fail=True)
        print("tied alias that differs:", r.stderr.strip())
        if "is tied to" not in r.stderr:
            failures.append(f"{name}: a differing alias was not refused")

# Bad input, each a one-line error.
torch.manual_seed(6)
model = GPT(V, T).eval()
d = tempfile.mkdtemp()
export_model(model, [T], "categorical", d)
files = ["--model", os.path.join(d, "model.json"), "--weights", os.path.join(d, "weights.safetensors")]
bad = torch.randint(0, V, (4, T))
bad[2, 3] = V
export_data(os.path.join(d, "oov.safetensors"), bad, torch.randint(0, V, (4, T)))
oracle.expect_error("token out of vocabulary", ["solve", *files, "--data", os.path.join(d, "oov.safetensors")],
             "sample 2")
export_data(os.path.join(d, "long.safetensors"), torch.randint(0, V, (4, T + 2)), torch.randint(0, V, (4, T + 2)))
oracle.expect_error("sequence longer than the model's", ["solve", *files, "--data", os.path.join(d, "long.safetensors")],
             "inputs")
export_data(os.path.join(d, "good.safetensors"), torch.randint(0, V, (4, T)), torch.randint(0, V, (4, T)))
weights = load_safetensors(os.path.join(d, "weights.safetensors"))
for label, mask, text in [("mask of the wrong shape", torch.triu(torch.full((T + 1, T + 1), float("-inf")), 1), "shape"),
                          ("mask that is not causal", torch.zeros(T, T), "is not a causal mask")]:
    w = dict(weights)
    w["blocks.0.mask"] = mask
    save_safetensors(os.path.join(d, "w.safetensors"), w)
    oracle.expect_error(label, ["solve", "--model", os.path.join(d, "model.json"), "--weights", os.path.join(d, "w.safetensors"),
                         "--data", os.path.join(d, "good.safetensors")], text)

# The exporter names what it cannot translate.
class Cross(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.memory = nn.Linear(4, 4)

    def forward(self, x):
        return self.attn(x, self.memory(x), x)[0]


try:
    export_model(Cross().eval(), [3, 4], "gaussian", tempfile.mkdtemp())
    failures.append("cross-attention was exported")
except ValueError as e:
    print("cross-attention:", e)
    if "self-attention" not in str(e):
        failures.append(f"cross-attention message: {e}")

oracle.finish()
