#!/usr/bin/env python3
"""Round trip through PyTorch (an independent oracle), for every likelihood and every Fisher kind: export an
nn.Sequential with tools/export_torch.py, run natgrad fvp / solve on it in float64, and check against PyTorch
autograd (torch_oracle.Oracle.check_case):
  - the gradient equals torch.autograd.grad of the mean negative log-likelihood (relative error < 1e-10);
  - natgrad fvp equals 1/N Σ J_nᵀ H_n J_n v, J v by PyTorch's double-backward trick (< 1e-10), with
    H_n = the exact output Fisher (exact), s_n s_nᵀ of the true-label score (empirical);
  - the Monte-Carlo product with 4000 labels per sample is within 5% of PyTorch's exact one (its relative
    error is about 1/√(4000) times the per-draw spread);
  - the direction solves (F + λI) d = g in PyTorch (relative residual < 1e-10) and loads back into the
    PyTorch model with load_state_dict (names and shapes);
  - a Sequential with named modules keeps its state_dict names through natgrad;
  - a torch.save checkpoint given as --weights is named as such with the exporter's function, and the file
    that function writes from the checkpoint's state_dict is read.
Exit code 77 (ctest SKIP) when PyTorch is not installed, 1 with NATGRAD_REQUIRE_TORCH=1 (torch_oracle.py)."""
import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_oracle import Oracle, export_data, export_model, load_safetensors, save_safetensors  # noqa: E402  (first: imports torch or exits)
import torch  # noqa: E402

oracle = Oracle()
N, C = 30, 5
for lik in ("categorical", "gaussian", "bernoulli"):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8), torch.nn.GELU(),
                                torch.nn.Linear(8, C)).double()
    x = torch.randn(N, 1, 8, 8, dtype=torch.float64)
    y = {"categorical": torch.randint(0, C, (N,)), "gaussian": torch.randn(N, C, dtype=torch.float64),
         "bernoulli": torch.randint(0, 2, (N, C)).double()}[lik]
    _, direction, _ = oracle.check_case(lik, model, [1, 8, 8], lik, x, y, kinds=("exact", "empirical", "mc"))
    # The direction loads back into the PyTorch model under its state_dict names (raises otherwise).
    model.load_state_dict({n: direction[n] for n in model.state_dict()})

# A Sequential with named modules keeps its state_dict names (fc1.weight, …) through natgrad.
named = torch.nn.Sequential(collections.OrderedDict(
    fc1=torch.nn.Linear(4, 6), act=torch.nn.Tanh(), out=torch.nn.Linear(6, 3))).double()
d = tempfile.mkdtemp()
export_model(named, [4], "categorical", d)
export_data(os.path.join(d, "data.safetensors"), torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,)))
oracle.run("solve", "--model", os.path.join(d, "model.json"), "--weights", os.path.join(d, "weights.safetensors"),
           "--data", os.path.join(d, "data.safetensors"), "--dtype", "float64", "--quiet",
           "--output", os.path.join(d, "dir.safetensors"))
names = sorted(load_safetensors(os.path.join(d, "dir.safetensors")))
print("named Sequential: the direction holds", names)
if names != sorted(n for n, _ in named.named_parameters()):
    oracle.fail(f"named Sequential names {names}")

# A torch.save checkpoint given as --weights (a zip archive, or a pickle in the legacy format): natgrad names
# it and the exporter's function; following that advice gives a file natgrad reads.
info = ["info", "--model", os.path.join(d, "model.json"), "--weights"]
for legacy in (False, True):
    pt = os.path.join(d, "legacy.pt" if legacy else "model.pt")
    torch.save(named.state_dict(), pt, _use_new_zipfile_serialization=not legacy)
    kind = "a Python pickle" if legacy else "a zip archive"
    msg = oracle.run(*info, pt, fail=True).stderr.strip()
    print(f"torch.save file ({kind}) as --weights: {msg}")
    if f"this is {kind}" not in msg or "save_safetensors(path, model.state_dict())" not in msg:
        oracle.fail(f"torch.save checkpoint ({kind}) message: {msg!r}")
converted = os.path.join(d, "converted.safetensors")
save_safetensors(converted, torch.load(os.path.join(d, "model.pt")))
oracle.run(*info, converted)
print("converted with save_safetensors(path, model.state_dict()): read")

oracle.finish()
