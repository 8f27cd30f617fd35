"""The runner every PyTorch oracle (torch_roundtrip.py, torch_graph_oracle.py, torch_gpt_oracle.py) shares:
importing PyTorch or ending the script, exporting a case, running natgrad on it, checking each quantity
against PyTorch autograd (torch_reference.py) within its bound, and the verdict.

Import it before anything that imports torch. Without PyTorch the script exits with 77 (ctest: skipped) when
the torch module is simply not installed, and with 1 (failed) when NATGRAD_REQUIRE_TORCH=1 is set (CI sets
it) or when torch is installed but cannot be imported (a broken installation is not a reason to skip)."""
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError as e:
    required = os.environ.get("NATGRAD_REQUIRE_TORCH") == "1"
    if isinstance(e, ModuleNotFoundError) and e.name == "torch" and not required:
        print("skipped: python3-torch is not installed (apt-get install python3-torch); "
              "NATGRAD_REQUIRE_TORCH=1 turns this into a failure")
        sys.exit(77)
    print(f"FAILED: PyTorch cannot be imported by {sys.executable}: {e!r}"
          + (" (NATGRAD_REQUIRE_TORCH=1 requires it)" if required else ""))
    sys.exit(1)

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(here, "..", "tools"))  # the exporter the oracles test (tools/export_torch.py)
from export_torch import export_data, export_model, load_safetensors, save_safetensors, to_vector  # noqa: E402
from torch_reference import dense_fisher, flat, fvp, nll, rel  # noqa: E402


def export_case(model, input_shape, lik, x, y):
    """Exports the model and the batch (x, y) to a fresh directory with a random direction v (one tensor per
    parameter, drawn after the export) as v.safetensors; returns the directory, v and the options every
    natgrad command on the case takes (float64, quiet)."""
    d = tempfile.mkdtemp()
    export_model(model, input_shape, lik, d)
    export_data(os.path.join(d, "data.safetensors"), x, y)
    v = [torch.randn_like(p) for p in model.parameters()]
    save_safetensors(os.path.join(d, "v.safetensors"), {n: t for (n, _), t in zip(model.named_parameters(), v)})
    common = ["--model", os.path.join(d, "model.json"), "--weights", os.path.join(d, "weights.safetensors"),
              "--data", os.path.join(d, "data.safetensors"), "--dtype", "float64", "--quiet"]
    return d, v, common


class Oracle:
    """Runs the natgrad binary (argv[1]), prints each comparison against its bound and exits with the
    verdict."""

    def __init__(self, natgrad=None):
        self.natgrad = natgrad or sys.argv[1]
        self.failures = []

    def check(self, label, err, bound):
        print(f"{label:58s} {err:.2e} (bound {bound:.0e})")
        if not err < bound:
            self.failures.append(label)

    def fail(self, label):
        print("FAILED:", label)
        self.failures.append(label)

    def run(self, *args, fail=False):
        """natgrad with args; exits at once if it fails (or, with fail=True, if it succeeds)."""
        r = subprocess.run([self.natgrad, *args], capture_output=True, text=True)
        if (r.returncode != 0) != fail:
            print(" ".join(args), r.stdout, r.stderr)
            sys.exit(1)
        return r

    def expect_error(self, label, args, text):
        """natgrad with args must fail with one line on stderr that contains text."""
        msg = self.run(*args, fail=True).stderr.strip()
        print(f"{label}: {msg}")
        if text not in msg or "\n" in msg:
            self.failures.append(f"{label}: {msg!r} (expected one line with {text!r})")

    def check_case(self, tag, model, input_shape, lik, x, y, kinds=("exact", "empirical"), lam=0.05, top=0):
        """Exports the case and checks natgrad on it against PyTorch, relative errors below 1e-10 unless said:
          - natgrad fvp for each Fisher kind against 1/(N·T) Σ J_nᵀ H_n J_n v (mc: 4000 labels per sample
            against the exact product, within 5%: about 1/√4000 times the per-draw spread);
          - the gradient (--save-gradient) against autograd of the mean negative log-likelihood;
          - the damped direction (F + λI)⁻¹ g (CG to 1e-13): its residual in PyTorch;
          - with top > 0, the top eigenvalues against the dense Fisher built from PyTorch's products.
        Returns the directory, the direction ({state_dict name: tensor}) and the common options."""
        d, v, common = export_case(model, input_shape, lik, x, y)
        for kind in kinds:
            out = os.path.join(d, f"fv_{kind}.safetensors")
            mc = ["--mc-samples", "4000", "--seed", "3"] if kind == "mc" else []
            self.run("fvp", *common, "--fisher", kind, *mc, "--vector", os.path.join(d, "v.safetensors"),
                     "--output", out)
            ref = fvp(model, x, y, lik, "exact" if kind == "mc" else kind, v)
            self.check(f"{tag}: fvp {kind} vs PyTorch", rel(to_vector(model, load_safetensors(out)), ref),
                       5e-2 if kind == "mc" else 1e-10)
        self.run("solve", *common, "--damping", str(lam), "--cg-tol", "1e-13", "--cg-max-iters", "5000",
                 "--output", os.path.join(d, "dir.safetensors"), "--save-gradient", os.path.join(d, "g.safetensors"))
        g_ref = flat(torch.autograd.grad(nll(lik, model(x), y), list(model.parameters())))
        self.check(f"{tag}: gradient vs PyTorch",
                   rel(to_vector(model, load_safetensors(os.path.join(d, "g.safetensors"))), g_ref), 1e-10)
        direction = load_safetensors(os.path.join(d, "dir.safetensors"))
        dvec = [direction[n].reshape(p.shape) for n, p in model.named_parameters()]
        residual = fvp(model, x, y, lik, "exact", dvec) + lam * flat(dvec) - g_ref
        self.check(f"{tag}: residual of the direction in PyTorch", float(residual.norm() / g_ref.norm()), 1e-10)
        if top > 0:
            report = os.path.join(d, "spectrum.json")
            self.run("spectrum", *common, "--top", str(top), "--report", report)
            with open(report) as f:
                ours = torch.tensor(json.load(f)["spectrum"]["eigenvalues"])
            ref = torch.linalg.eigvalsh(dense_fisher(model, x, y, lik)).flip(0)[:top]
            self.check(f"{tag}: top-{top} eigenvalues vs the dense Fisher", rel(ours, ref), 1e-10)
        return d, direction, common

    def finish(self):
        print("FAILED: " + ", ".join(self.failures) if self.failures else "all within bounds")
        sys.exit(1 if self.failures else 0)
