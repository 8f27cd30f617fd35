#!/usr/bin/env python3
"""Round trip through PyTorch (an independent oracle), for every likelihood and every Fisher kind: export an
nn.Sequential with tools/export_torch.py, run natgrad fvp / solve on it in float64, and check against PyTorch
autograd:
  - the gradient equals torch.autograd.grad of the mean negative log-likelihood (relative error < 1e-10);
  - natgrad fvp equals 1/N Σ J_nᵀ H_n J_n v, J v by PyTorch's double-backward trick (< 1e-10), with
    H_n = the exact output Fisher (exact), s_n s_nᵀ of the true-label score (empirical);
  - the Monte-Carlo product with 4000 labels per sample is within 5% of PyTorch's exact one (its relative
    error is about 1/√(4000) times the per-draw spread);
  - the direction loads back into the PyTorch model with load_state_dict (names and shapes) and solves
    (F + λI) d = g there (relative residual < 1e-10);
  - a torch.save checkpoint given as --weights is named as such with the exporter's function, and the file
    that function writes from the checkpoint's state_dict is read.
Exit code 77 (ctest SKIP) when PyTorch is not installed."""
import collections
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from torch_reference import export_case, flat, fvp, nll, rel  # noqa: E402  (exits 77 without PyTorch)
import torch  # noqa: E402
from export_torch import export_model, export_data, load_safetensors, save_safetensors, to_vector  # noqa: E402

natgrad = sys.argv[1]
N, C, lam = 30, 5, 0.05


failures = []
for lik in ("categorical", "gaussian", "bernoulli"):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8), torch.nn.GELU(),
                                torch.nn.Linear(8, C)).double()
    x = torch.randn(N, 1, 8, 8, dtype=torch.float64)
    y = {"categorical": torch.randint(0, C, (N,)), "gaussian": torch.randn(N, C, dtype=torch.float64),
         "bernoulli": torch.randint(0, 2, (N, C)).double()}[lik]
    d, v, common = export_case(model, [1, 8, 8], lik, x, y)
    params = list(model.parameters())

    def run(*args):
        r = subprocess.run([natgrad, *args, *common], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            sys.exit(1)

    for kind in ("exact", "empirical", "mc"):
        out = os.path.join(d, f"fv_{kind}.safetensors")
        run("fvp", "--fisher", kind, "--mc-samples", "4000", "--seed", "3", "--vector",
            os.path.join(d, "v.safetensors"), "--output", out)
        ours = to_vector(model, load_safetensors(out))
        ref = fvp(model, x, y, lik, "exact" if kind == "mc" else kind, v)
        err, bound = rel(ours, ref), (5e-2 if kind == "mc" else 1e-10)
        print(f"{lik:11s} fvp {kind:9s} vs PyTorch: {err:.2e} (bound {bound:.0e})")
        if not err < bound:
            failures.append(f"{lik} fvp {kind}")

    run("solve", "--damping", str(lam), "--cg-tol", "1e-13", "--cg-max-iters", "4000",
        "--output", os.path.join(d, "dir.safetensors"), "--save-gradient", os.path.join(d, "g.safetensors"))
    g_ref = flat(torch.autograd.grad(nll(lik, model(x), y), params))
    e_grad = rel(to_vector(model, load_safetensors(os.path.join(d, "g.safetensors"))), g_ref)
    direction = load_safetensors(os.path.join(d, "dir.safetensors"))
    dvec = [direction[n].reshape(p.shape) for n, p in model.named_parameters()]
    fd = fvp(model, x, y, lik, "exact", dvec) + lam * flat(dvec)
    e_solve = float((fd - g_ref).norm() / g_ref.norm())
    # The direction loads back into the PyTorch model under its state_dict names.
    model.load_state_dict({n: direction[n] for n in model.state_dict()})
    print(f"{lik:11s} gradient vs PyTorch: {e_grad:.2e}; residual of the direction in PyTorch: {e_solve:.2e}")
    if not (e_grad < 1e-10 and e_solve < 1e-10):
        failures.append(f"{lik} gradient or solve")

# A Sequential with named modules keeps its state_dict names (fc1.weight, …) through natgrad.
named = torch.nn.Sequential(collections.OrderedDict(
    fc1=torch.nn.Linear(4, 6), act=torch.nn.Tanh(), out=torch.nn.Linear(6, 3))).double()
d = tempfile.mkdtemp()
export_model(named, [4], "categorical", d)
export_data(os.path.join(d, "data.safetensors"), torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,)))
r = subprocess.run([natgrad, "solve", "--model", os.path.join(d, "model.json"), "--weights",
                    os.path.join(d, "weights.safetensors"), "--data", os.path.join(d, "data.safetensors"),
                    "--dtype", "float64", "--quiet", "--output", os.path.join(d, "dir.safetensors")],
                   capture_output=True, text=True)
if r.returncode != 0:
    print(r.stdout, r.stderr)
    failures.append("named Sequential")
else:
    names = sorted(load_safetensors(os.path.join(d, "dir.safetensors")))
    print("named Sequential: the direction holds", names)
    if names != sorted(n for n, _ in named.named_parameters()):
        failures.append("named Sequential names")

# A torch.save checkpoint given as --weights (a zip archive, or a pickle in the legacy format): natgrad names
# it and the exporter's function; following that advice gives a file natgrad reads.
info = [natgrad, "info", "--model", os.path.join(d, "model.json"), "--weights"]
for legacy in (False, True):
    pt = os.path.join(d, "legacy.pt" if legacy else "model.pt")
    torch.save(named.state_dict(), pt, _use_new_zipfile_serialization=not legacy)
    r = subprocess.run(info + [pt], capture_output=True, text=True)
    kind = "a Python pickle" if legacy else "a zip archive"
    ok = (r.returncode != 0 and f"this is {kind}" in r.stderr
          and "save_safetensors(path, model.state_dict())" in r.stderr)
    print(f"torch.save file ({kind}) as --weights: exit {r.returncode}, {r.stderr.strip()}")
    if not ok:
        failures.append(f"torch.save checkpoint ({kind}) message")
converted = os.path.join(d, "converted.safetensors")
save_safetensors(converted, torch.load(os.path.join(d, "model.pt")))
r = subprocess.run(info + [converted], capture_output=True, text=True)
print(f"converted with save_safetensors(path, model.state_dict()): exit {r.returncode}")
if r.returncode != 0:
    print(r.stdout, r.stderr)
    failures.append("the converted checkpoint")

print("FAILED: " + ", ".join(failures) if failures else "all within bounds")
sys.exit(1 if failures else 0)
