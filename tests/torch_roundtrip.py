#!/usr/bin/env python3
"""Round trip through PyTorch (an independent oracle): export an nn.Sequential with tools/export_torch.py, run
natgrad fvp / solve on it in float64, and check against PyTorch autograd:
  - the gradient equals torch.autograd.grad of the mean cross-entropy (relative error < 1e-10);
  - natgrad fvp equals J^T H J v / N computed by PyTorch's double-backward trick (< 1e-10);
  - the direction loads back into the PyTorch model with load_state_dict (names and shapes) and solves
    (F + lambda I) d = g there (relative residual < 1e-6).
Exit code 77 (ctest SKIP) when PyTorch is not installed."""
import os
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:
    print("skipped: python3-torch is not installed (apt-get install python3-torch)")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from export_torch import export_model, export_data, load_safetensors, save_safetensors, to_vector  # noqa: E402

natgrad = sys.argv[1]
torch.manual_seed(1)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.MaxPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8), torch.nn.GELU(),
                            torch.nn.Linear(8, 5)).double()
N, lam = 30, 0.05
x = torch.randn(N, 1, 8, 8, dtype=torch.float64)
y = torch.randint(0, 5, (N,))
d = tempfile.mkdtemp()
export_model(model, [1, 8, 8], "categorical", d)
export_data(os.path.join(d, "data.safetensors"), x, y)
params = list(model.parameters())
v = [torch.randn_like(p) for p in params]
save_safetensors(os.path.join(d, "v.safetensors"), {n: t for (n, _), t in zip(model.named_parameters(), v)})
common = ["--model", os.path.join(d, "model.json"), "--weights", os.path.join(d, "weights.safetensors"),
          "--data", os.path.join(d, "data.safetensors"), "--dtype", "float64", "--quiet"]


def run(*args):
    r = subprocess.run([natgrad, *args, *common], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        sys.exit(1)


def rel(a, b):
    return float((a - b).norm() / max(a.norm(), b.norm()))


def fvp(vec):
    # J v by the double-vjp trick, then J^T H (J v) / N with H = diag(p) - p p^T.
    logits = model(x)
    u = torch.zeros_like(logits, requires_grad=True)
    g = torch.autograd.grad(logits, params, grad_outputs=u, create_graph=True)
    jv = torch.autograd.grad(g, u, grad_outputs=vec)[0]
    p = torch.softmax(logits.detach(), 1)
    hjv = (p * jv - p * (p * jv).sum(1, keepdim=True)) / N
    return torch.autograd.grad(logits, params, grad_outputs=hjv)


run("fvp", "--vector", os.path.join(d, "v.safetensors"), "--output", os.path.join(d, "fv.safetensors"))
ours = to_vector(model, load_safetensors(os.path.join(d, "fv.safetensors")))
ref = torch.cat([t.reshape(-1) for t in fvp(v)])
e_fvp = rel(ours, ref)

run("solve", "--damping", str(lam), "--cg-tol", "1e-12", "--cg-max-iters", "2000",
    "--output", os.path.join(d, "dir.safetensors"), "--save-gradient", os.path.join(d, "g.safetensors"))
g_ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)])
e_grad = rel(to_vector(model, load_safetensors(os.path.join(d, "g.safetensors"))), g_ref)
direction = load_safetensors(os.path.join(d, "dir.safetensors"))
dvec = [direction[n].reshape(p.shape) for n, p in model.named_parameters()]
fd = torch.cat([t.reshape(-1) for t in fvp(dvec)]) + lam * torch.cat([t.reshape(-1) for t in dvec])
e_solve = float((fd - g_ref).norm() / g_ref.norm())
# The direction loads back into the PyTorch model under its state_dict names.
model.load_state_dict({n: direction[n] for n in model.state_dict()})

print(f"fvp vs PyTorch: {e_fvp:.2e}; gradient vs PyTorch: {e_grad:.2e}; residual of the direction in PyTorch: {e_solve:.2e}")
ok = e_fvp < 1e-10 and e_grad < 1e-10 and e_solve < 1e-6
sys.exit(0 if ok else 1)
