"""PyTorch references shared by the oracle tests (torch_roundtrip.py, torch_graph_oracle.py,
torch_gpt_oracle.py): the mean negative log-likelihood as PyTorch users write it, H u for each likelihood and
Fisher kind from the formulas, the Fisher-vector product 1/(N·T) Σ J_nᵀ H_n J_n v by PyTorch's
double-backward trick and the dense Fisher from it; and the report the scripts print and exit with.
Importing it exits with 77 (ctest SKIP) when PyTorch is not installed, and puts tools/ on the path."""
import os
import subprocess
import sys
import tempfile

try:  # every oracle imports this module first: without PyTorch it ends the script as skipped
    import torch
    import torch.nn.functional as F
except ImportError:
    print("skipped: python3-torch is not installed (apt-get install python3-torch)")
    sys.exit(77)

# The exporter the oracles test (tools/export_torch.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))


def rel(a, b):
    return float((a - b).norm() / max(a.norm(), b.norm()))


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def per_position(z, y):
    """[N, T, C] outputs as N·T rows, as PyTorch's cross_entropy(logits.view(-1, C), y.view(-1)) reads them."""
    if z.dim() == 3:
        return z.reshape(-1, z.shape[-1]), y.reshape(-1) if y.dim() == 2 and y.dtype == torch.long else y.reshape(-1, z.shape[-1])
    return z, y


def nll(lik, z, y):
    z, y = per_position(z, y)
    N = z.shape[0]
    if lik == "categorical":
        return F.cross_entropy(z, y)
    if lik == "gaussian":
        return 0.5 * ((z - y) ** 2).sum() / N
    return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / N


def output_fisher_times(lik, kind, z, y, u):
    z = z.detach()
    C = z.shape[1]
    if kind == "empirical":
        if lik == "categorical":
            s = torch.softmax(z, 1) - F.one_hot(y, C).double()
        elif lik == "gaussian":
            s = z - y
        else:
            s = torch.sigmoid(z) - y
        return s * (s * u).sum(1, keepdim=True)
    if lik == "categorical":
        p = torch.softmax(z, 1)
        return p * u - p * (p * u).sum(1, keepdim=True)
    if lik == "gaussian":
        return u
    q = torch.sigmoid(z)
    return q * (1 - q) * u


def fvp(model, x, y, lik, kind, vec):
    """1/(N·T) Σ J_nᵀ H_n J_n v with J v by the double-backward trick; for [N, T, C] outputs H_n is
    block-diagonal over positions (exact) or the outer product of the sample's stacked scores (empirical)."""
    params = list(model.parameters())
    logits = model(x)
    w = torch.zeros_like(logits, requires_grad=True)
    g = torch.autograd.grad(logits, params, grad_outputs=w, create_graph=True)
    jv = torch.autograd.grad(g, w, grad_outputs=vec)[0]
    count = logits.shape[0] * (logits.shape[1] if logits.dim() == 3 else 1)
    if logits.dim() == 3 and kind == "empirical":  # s_n stacks the positions' scores: H_n u = s_n (s_n · u_n)
        z, yy = per_position(logits.detach(), y)
        s = torch.softmax(z, 1) - F.one_hot(yy, z.shape[1]).double()
        s = s.reshape(logits.shape)
        hu = s * (s * jv).sum((1, 2), keepdim=True)
    else:
        z, yy = per_position(logits, y)
        hu = output_fisher_times(lik, kind, z, yy, jv.reshape(z.shape)).reshape(logits.shape)
    return flat(torch.autograd.grad(logits, params, grad_outputs=hu / count))


def dense_fisher(model, x, y, lik):
    """The exact Fisher as a dense P × P matrix, one column per unit vector."""
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    cols = []
    for k in range(P):
        e = torch.zeros(P)
        e[k] = 1
        vec, offset = [], 0
        for p in params:
            vec.append(e[offset:offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        cols.append(fvp(model, x, y, lik, "exact", vec))
    return torch.stack(cols, 1)


def export_case(model, input_shape, lik, x, y):
    """Exports the model and the batch (x, y) to a fresh directory with a random direction v (one tensor per
    parameter, drawn after the export) as v.safetensors; returns the directory, v and the options every
    natgrad command on the case takes (float64, quiet)."""
    from export_torch import export_data, export_model, save_safetensors
    d = tempfile.mkdtemp()
    export_model(model, input_shape, lik, d)
    export_data(os.path.join(d, "data.safetensors"), x, y)
    v = [torch.randn_like(p) for p in model.parameters()]
    save_safetensors(os.path.join(d, "v.safetensors"), {n: t for (n, _), t in zip(model.named_parameters(), v)})
    common = ["--model", os.path.join(d, "model.json"), "--weights", os.path.join(d, "weights.safetensors"),
              "--data", os.path.join(d, "data.safetensors"), "--dtype", "float64", "--quiet"]
    return d, v, common


class Report:
    """Runs the natgrad binary, prints each comparison against its bound and exits with the verdict."""

    def __init__(self, natgrad):
        self.natgrad = natgrad
        self.failures = []

    def check(self, label, err, bound):
        print(f"{label:58s} {err:.2e} (bound {bound:.0e})")
        if not err < bound:
            self.failures.append(label)

    def run(self, *args, fail=False):
        """natgrad with args; exits at once if it fails (or, with fail=True, if it succeeds)."""
        r = subprocess.run([self.natgrad, *args], capture_output=True, text=True)
        if (r.returncode != 0) != fail:
            print(" ".join(args), r.stdout, r.stderr)
            sys.exit(1)
        return r

    def finish(self):
        print("FAILED: " + ", ".join(self.failures) if self.failures else "all within bounds")
        sys.exit(1 if self.failures else 0)
