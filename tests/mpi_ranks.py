#!/usr/bin/env python3
"""natgrad under MPI against the same binary in one process (ctest, MPI builds only).

Usage: mpi_ranks.py <natgrad> <mpiexec> <ranks>

For each case (three likelihoods, a chain and a residual graph, a batch that the ranks do not divide
evenly, a curvature batch smaller than the batch, categorical targets of -100 that leave a rank's whole share
out) it runs `natgrad solve` (also with the diagonal
preconditioner), `fvp` (exact, empirical, Monte-Carlo) and `spectrum` once in one process and once under `mpiexec -np <ranks>`, in float64, and checks:
  - loss, gradient and every Fisher-vector product agree to 1e-12 (relative): the sums over ranks add the same
    per-sample terms in another order, nothing more;
  - in one process and under MPI alike, the exact product is 1/N Σ_n J_nᵀ H_n J_n v + λv and the gradient
    1/N Σ_n J_nᵀ (softmax(z_n) − e_{y_n}), with J_n from central differences of a forward pass written here
    in numpy: the scale and the damping are applied once, after the sum over the ranks;
  - the top eigenvalues agree to 1e-9, and the damped directions (CG to 1e-11) to 1e-7 (the condition number
    times CG's tolerance bounds how far two converged iterates can lie apart);
  - two runs with the same ranks write bit-identical files;
  - a rank whose share of the data is corrupt (NaN) ends the whole job with that rank's error, naming the
    global sample, exit status 1 and no output file, within the timeout; so does a forward pass that
    overflows in one rank's share;
  - SIGTERM to the launcher, sent once CG's first progress line is out, stops CG on every rank at the same
    iteration; the current iterate and the report are written;
  - `natgrad train` (adam, natgrad with CG and with the Gram, kfac), every minibatch shared by the ranks and the
    last smaller than them: the --save parameters agree with one process to 1e-12 (1e-11 for the Gram; natgrad by CG: to 1e-9,
    CG's tolerance being 1e-10), the header and the report
    say the ranks, and two runs write the same bytes.
Only numpy is needed (the data and the vectors are written here as safetensors).
"""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

natgrad, mpiexec, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
MPI = [mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)]
# (Ranks beyond the cores yield instead of spinning while they wait.)
env = dict(os.environ, OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_mpi_yield_when_idle="1",
           OMP_NUM_THREADS="1")
failures = []
T0 = time.time()


def check(ok, what):
    print(f"{time.time() - T0:6.1f}s " + ("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dt = {"F64": np.float64, "F32": np.float32}[t["dtype"]]
        s, e = t["data_offsets"]
        out[name] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=dt).reshape(t["shape"])
    return out


def flat(path):
    t = read_safetensors(path)
    return np.concatenate([t[k].ravel() for k in sorted(t)])


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def run(args, mpi, timeout=120):
    cmd = (MPI if mpi else []) + [natgrad] + args + ["--quiet", "--dtype", "float64"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


work = tempfile.mkdtemp(prefix="natgrad_mpi_")
rng = np.random.default_rng(7)
N, F, C = 101, 6, 4  # 101 samples: no rank count from 2 to 100 divides them


def p(name):
    return os.path.join(work, name)


chain = {"input_shape": [F], "layers": [{"type": "linear", "in_features": F, "out_features": 8}, {"type": "tanh"},
                                        {"type": "linear", "in_features": 8, "out_features": C}]}
residual = {"format_version": 2, "input_shape": [F], "output": "head", "layers": [
    {"id": "fc1", "name": "fc1", "type": "linear", "in_features": F, "out_features": F, "inputs": ["input"]},
    {"id": "act", "type": "gelu", "inputs": ["fc1"]},
    {"id": "sum", "type": "add", "inputs": ["act", "input"]},
    {"id": "norm", "name": "norm", "type": "layer_norm", "normalized_shape": [F], "inputs": ["sum"]},
    {"id": "head", "name": "head", "type": "linear", "in_features": F, "out_features": C, "inputs": ["norm"]}]}

x = rng.standard_normal((N, F))
cases = {
    "categorical": (chain, {"inputs": ("F64", x), "targets": ("I64", rng.integers(0, C, N))}),
    "gaussian": (chain, {"inputs": ("F64", x), "targets": ("F64", rng.standard_normal((N, C)))}),
    "bernoulli": (chain, {"inputs": ("F64", x), "targets": ("F64", (rng.random((N, C)) < 0.5) * 1.0)}),
    "residual graph": (residual, {"inputs": ("F64", x), "targets": ("I64", rng.integers(0, C, N))}),
}
# Targets of -100 (ignore_index) count for nothing: the first 34 samples (rank 0's whole share of 3 ranks) and
# every third one after them; the ranks sum the count of those that do.
padded = np.random.default_rng(11).integers(0, C, N)
padded[:34] = -100
padded[34::3] = -100
cases["categorical padded"] = (chain, {"inputs": ("F64", x), "targets": ("I64", padded)})

for name, (spec, data) in cases.items():
    tag = name.replace(" ", "_")
    model = dict(spec, likelihood="categorical" if data["targets"][0] == "I64" else name)
    with open(p(tag + ".json"), "w") as f:
        json.dump(model, f)
    write_safetensors(p(tag + ".safetensors"), data)
    common = ["--model", p(tag + ".json"), "--data", p(tag + ".safetensors"), "--seed", "3"]

    # solve: gradient, loss, direction, spectrum; the curvature on the first 50 samples for one case
    curvature = ["--curvature-batch", "50"] if name in ("gaussian", "categorical padded") else []
    # (The condition number of a Gaussian or Bernoulli F + λI needs λ_min by Lanczos, hundreds of products:
    # the solve's spectrum is checked on the categorical cases, the spectrum command on all.)
    spectrum = "3" if data["targets"][0] == "I64" else "0"
    outs = {}
    for mpi in (False, True):
        k = "mpi" if mpi else "one"
        r = run(["solve"] + common + curvature + ["--damping", "1e-2", "--cg-tol", "1e-11", "--spectrum", spectrum,
                 "--output", p(f"{tag}_d_{k}.safetensors"), "--save-gradient", p(f"{tag}_g_{k}.safetensors"),
                 "--report", p(f"{tag}_r_{k}.json")], mpi)
        check(r.returncode == 0, f"{name}: solve ({k}) exits 0 {r.stderr.strip()[-300:]}")
        outs[k] = json.load(open(p(f"{tag}_r_{k}.json"))) if r.returncode == 0 else None
    if outs["one"] and outs["mpi"]:
        one, many = outs["one"], outs["mpi"]
        check(many["ranks"] == ranks and one["ranks"] == 1, f"{name}: the report says ranks {many['ranks']}")
        check(many["samples"] == N and many["curvature_samples"] == one["curvature_samples"],
              f"{name}: the same samples in total ({many['samples']}, curvature {many['curvature_samples']})")
        check(abs(many["loss"] - one["loss"]) <= 1e-12 * abs(one["loss"]),
              f"{name}: loss {many['loss']!r} vs {one['loss']!r}")
        e = rel(flat(p(f"{tag}_g_mpi.safetensors")), flat(p(f"{tag}_g_one.safetensors")))
        check(e <= 1e-12, f"{name}: gradient, relative difference {e:.1e}")
        e = rel(flat(p(f"{tag}_d_mpi.safetensors")), flat(p(f"{tag}_d_one.safetensors")))
        check(e <= 1e-7, f"{name}: direction (CG to 1e-11), relative difference {e:.1e}")
        if spectrum != "0":
            ev1, evk = np.array(one["spectrum"]["eigenvalues"]), np.array(many["spectrum"]["eigenvalues"])
            e = rel(evk, ev1)
            check(e <= 1e-9, f"{name}: top-3 eigenvalues {evk} vs {ev1}, relative difference {e:.1e}")

    # The Gram solver and the exact spectrum: every rank gathers the rows (with the curvature batch of the
    # case and ignored targets), and the direction, the exact eigenvalues and the trace are one process's.
    gram = {}
    for mpi in (False, True):
        k = "mpi" if mpi else "one"
        r = run(["solve"] + common + curvature + ["--damping", "1e-2", "--solver", "smw", "--spectrum", "3",
                 "--output", p(f"{tag}_smw_{k}.safetensors"), "--report", p(f"{tag}_smw_{k}.json")], mpi)
        check(r.returncode == 0, f"{name}: solve --solver smw ({k}) exits 0 {r.stderr.strip()[-300:]}")
        r2 = run(["spectrum"] + common + curvature + ["--exact", "--top", "3", "--report", p(f"{tag}_ex_{k}.json")], mpi)
        check(r2.returncode == 0, f"{name}: spectrum --exact ({k}) exits 0 {r2.stderr.strip()[-300:]}")
        gram[k] = r.returncode == 0 and r2.returncode == 0
    if gram["one"] and gram["mpi"]:
        e = rel(flat(p(f"{tag}_smw_mpi.safetensors")), flat(p(f"{tag}_smw_one.safetensors")))
        check(e <= 1e-10, f"{name}: smw direction, relative difference {e:.1e}")
        e = rel(flat(p(f"{tag}_smw_one.safetensors")), flat(p(f"{tag}_d_one.safetensors")))
        check(e <= 1e-7, f"{name}: smw direction against CG's to 1e-11, relative difference {e:.1e}")
        s1, sk = json.load(open(p(f"{tag}_ex_one.json")))["spectrum"], json.load(open(p(f"{tag}_ex_mpi.json")))["spectrum"]
        e = rel(np.array(sk["all_nonzero_eigenvalues"]), np.array(s1["all_nonzero_eigenvalues"]))
        check(len(sk["all_nonzero_eigenvalues"]) == len(s1["all_nonzero_eigenvalues"]) and e <= 1e-11,
              f"{name}: spectrum --exact, every nonzero eigenvalue, relative difference {e:.1e}")
        check(abs(sk["trace"] - s1["trace"]) <= 1e-12 * s1["trace"], f"{name}: exact trace {sk['trace']} vs {s1['trace']}")

    # The diagonal preconditioner: its empirical-Fisher statistics are sums over the ranks too.
    if name == "categorical":
        for mpi in (False, True):
            k = "mpi" if mpi else "one"
            r = run(["solve"] + common + ["--damping", "1e-2", "--cg-tol", "1e-11", "--preconditioner", "diagonal",
                     "--output", p(f"{tag}_pd_{k}.safetensors")], mpi)
            check(r.returncode == 0, f"{name}: preconditioned solve ({k}) exits 0 {r.stderr.strip()[-300:]}")
        e = rel(flat(p(f"{tag}_pd_mpi.safetensors")), flat(p(f"{tag}_pd_one.safetensors")))
        check(e <= 1e-7, f"{name}: preconditioned direction, relative difference {e:.1e}")

    # fvp: exact, empirical, Monte-Carlo (labels keyed by the global sample: the same draws for any ranks)
    v = rng.standard_normal(len(flat(p(f"{tag}_g_one.safetensors"))))
    grad = read_safetensors(p(f"{tag}_g_one.safetensors"))
    vec, at = {}, 0
    for k in sorted(grad):
        vec[k] = ("F64", v[at:at + grad[k].size].reshape(grad[k].shape))
        at += grad[k].size
    write_safetensors(p(tag + "_v.safetensors"), vec)
    for kind in ("exact", "empirical", "mc"):
        for mpi in (False, True):
            k = "mpi" if mpi else "one"
            r = run(["fvp"] + common + ["--fisher", kind, "--mc-samples", "2", "--damping", "0.5", "--vector",
                     p(tag + "_v.safetensors"), "--output", p(f"{tag}_fvp_{kind}_{k}.safetensors")], mpi)
            check(r.returncode == 0, f"{name}: fvp {kind} ({k}) exits 0 {r.stderr.strip()[-300:]}")
        e = rel(flat(p(f"{tag}_fvp_{kind}_mpi.safetensors")), flat(p(f"{tag}_fvp_{kind}_one.safetensors")))
        check(e <= 1e-12, f"{name}: fvp {kind}, relative difference {e:.1e}")

    # spectrum
    ev = {}
    for mpi in (False, True):
        k = "mpi" if mpi else "one"
        r = run(["spectrum"] + common + ["--top", "3", "--report", p(f"{tag}_s_{k}.json")], mpi)
        check(r.returncode == 0, f"{name}: spectrum ({k}) exits 0 {r.stderr.strip()[-300:]}")
        ev[k] = np.array(json.load(open(p(f"{tag}_s_{k}.json")))["spectrum"]["eigenvalues"]) if r.returncode == 0 else None
    if ev["one"] is not None and ev["mpi"] is not None:
        e = rel(ev["mpi"], ev["one"])
        check(e <= 1e-9, f"{name}: spectrum --top 3, relative difference {e:.1e}")

# The product and the gradient against a reference independent of natgrad: the chain model's forward pass in
# numpy, its Jacobian by central differences, H_n = diag(p) − ppᵀ. A scale 1/N applied twice or never, or λv
# applied never or once per rank, lies orders of magnitude outside the tolerance (checked first).
W = {"0.weight": rng.standard_normal((8, F)) * 0.5, "0.bias": rng.standard_normal(8) * 0.1,
     "2.weight": rng.standard_normal((C, 8)) * 0.5, "2.bias": rng.standard_normal(C) * 0.1}
names = sorted(W)  # flat()'s order
write_safetensors(p("ref_w.safetensors"), {k: ("F64", a) for k, a in W.items()})
theta = np.concatenate([W[k].ravel() for k in names])


def logits(t):
    at, w = 0, {}
    for k in names:
        w[k] = t[at:at + W[k].size].reshape(W[k].shape)
        at += W[k].size
    return np.tanh(x @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]


h = 1e-6
J = np.empty((N, C, theta.size))  # J[n] = ∂z_n/∂θ
for i in range(theta.size):
    up, down = theta.copy(), theta.copy()
    up[i] += h
    down[i] -= h
    J[:, :, i] = (logits(up) - logits(down)) / (2 * h)
z = logits(theta)
prob = np.exp(z - z.max(axis=1, keepdims=True))
prob /= prob.sum(axis=1, keepdims=True)
labels = cases["categorical"][1]["targets"][1]
lam = 0.05
v = rng.standard_normal(theta.size)
at, vec = 0, {}
for k in names:
    vec[k] = ("F64", v[at:at + W[k].size].reshape(W[k].shape))
    at += W[k].size
write_safetensors(p("ref_v.safetensors"), vec)
sum_fv = sum(J[n].T @ ((np.diag(prob[n]) - np.outer(prob[n], prob[n])) @ (J[n] @ v)) for n in range(N))
score = prob.copy()
score[np.arange(N), labels] -= 1
sum_g = sum(J[n].T @ score[n] for n in range(N))
product, gradient = sum_fv / N + lam * v, sum_g / N
tol = 1e-8  # central differences with h = 1e-6 in float64: about 1e-10 here
wrong = [sum_fv / N**2 + lam * v, sum_fv + lam * v, sum_fv / N, sum_fv / N + 2 * lam * v, sum_fv / N + ranks * lam * v]
check(min(rel(w, product) for w in wrong) > 1e3 * tol and min(rel(sum_g, gradient), rel(sum_g / N**2, gradient)) >
      1e3 * tol, f"reference: a scale or damping applied twice or never differs by "
      f"{min(rel(w, product) for w in wrong):.1e} at least")
common = ["--model", p("categorical.json"), "--data", p("categorical.safetensors"), "--weights", p("ref_w.safetensors")]
for mpi in (False, True):
    k = "mpi" if mpi else "one"
    r = run(["fvp"] + common + ["--fisher", "exact", "--damping", str(lam), "--vector", p("ref_v.safetensors"),
             "--output", p(f"ref_fvp_{k}.safetensors")], mpi)
    check(r.returncode == 0, f"reference fvp ({k}) exits 0 {r.stderr.strip()[-300:]}")
    if r.returncode == 0:
        e = rel(flat(p(f"ref_fvp_{k}.safetensors")), product)
        check(e <= tol, f"fvp ({k}) = 1/N Σ J_nᵀ H_n J_n v + λv of the numpy reference, relative difference {e:.1e}")
    r = run(["solve"] + common + ["--damping", str(lam), "--spectrum", "0", "--cg-max-iters", "1",
             "--output", p(f"ref_d_{k}.safetensors"), "--save-gradient", p(f"ref_g_{k}.safetensors")], mpi)
    check(r.returncode == 0, f"reference gradient ({k}) exits 0 {r.stderr.strip()[-300:]}")
    if r.returncode == 0:
        e = rel(flat(p(f"ref_g_{k}.safetensors")), gradient)
        check(e <= tol, f"gradient ({k}) = 1/N Σ J_nᵀ (p_n − e_y) of the numpy reference, relative difference {e:.1e}")

# Deterministic for a given number of ranks: the same bytes twice.
common = ["--model", p("categorical.json"), "--data", p("categorical.safetensors")]
for i in (1, 2):
    r = run(["solve"] + common + ["--damping", "1e-3", "--output", p(f"again_{i}.safetensors")], True)
    check(r.returncode == 0, f"repeat {i} exits 0")
check(open(p("again_1.safetensors"), "rb").read() == open(p("again_2.safetensors"), "rb").read(),
      f"two runs on {ranks} ranks write the same bytes")

# A corrupt share: NaN inputs in the last rank's samples. Every rank ends, with that rank's message.
bad_x = x.copy()
bad_x[N - 2, 3] = np.nan
write_safetensors(p("nan.safetensors"), {"inputs": ("F64", bad_x), "targets": ("I64", rng.integers(0, C, N))})
out = p("nan_out.safetensors")
start = time.time()
r = run(["solve", "--model", p("categorical.json"), "--data", p("nan.safetensors"), "--output", out], True, timeout=60)
check(r.returncode != 0 and not os.path.exists(out), f"a NaN in the last share: exit {r.returncode}, no output")
check(f"inputs of sample {N - 2} contain NaN or Inf" in r.stderr, "the error names the global sample: " +
      r.stderr.strip().splitlines()[0] if r.stderr.strip() else "(no message)")
check(r.stderr.count("error:") == 1, "the error is printed once")
check(time.time() - start < 60, f"and the job ended in {time.time() - start:.1f} s")

# A forward pass that overflows only in the last share (finite inputs of 1e308 summed by a weight of ones):
# every rank reports it, naming the global sample.
big_x = x.copy()
big_x[N - 1, :] = 1e308
write_safetensors(p("big.safetensors"), {"inputs": ("F64", big_x), "targets": ("I64", rng.integers(0, C, N))})
linear = {"input_shape": [F], "likelihood": "categorical",
          "layers": [{"type": "linear", "in_features": F, "out_features": C}]}
with open(p("linear.json"), "w") as f:
    json.dump(linear, f)
write_safetensors(p("ones.safetensors"), {"0.weight": ("F64", np.ones((C, F))), "0.bias": ("F64", np.zeros(C))})
r = run(["solve", "--model", p("linear.json"), "--weights", p("ones.safetensors"), "--data", p("big.safetensors"),
         "--output", out], True, timeout=60)
check(r.returncode == 1 and not os.path.exists(out), f"an overflow in the last share: exit {r.returncode}, no output")
check(f"first at sample {N - 1}" in r.stderr and r.stderr.count("error:") == 1,
      "its error, printed once, names the global sample: " + r.stderr.strip()[-200:])

# SIGTERM to the launcher: OpenMPI's mpirun passes SIGTERM on to the ranks after odls_base_sigkill_timeout
# seconds and kills them as long after that; CG stops on every rank at rank 0's decision, and the best
# iterate and the report are written in between. The signal is sent once CG is running: after rank 0's
# first CG progress line on stderr ("cg    1  |r|/|b| = …"), which must come within 120 s.
# (A wide model on 8000 samples: about 10 ms a product, so CG is still running when the signal comes.)
big_n = 8000
write_safetensors(p("long.safetensors"), {"inputs": ("F64", rng.standard_normal((big_n, F))),
                                          "targets": ("I64", rng.integers(0, C, big_n))})
wide = {"input_shape": [F], "likelihood": "categorical",
        "layers": [{"type": "linear", "in_features": F, "out_features": 1024}, {"type": "tanh"},
                   {"type": "linear", "in_features": 1024, "out_features": C}]}
with open(p("wide.json"), "w") as f:
    json.dump(wide, f)
out, report = p("stopped.safetensors"), p("stopped.json")
cmd = MPI[:1] + ["--mca", "odls_base_sigkill_timeout", "5"] + MPI[1:] + [
    natgrad, "solve", "--model", p("wide.json"), "--data", p("long.safetensors"), "--damping", "0",
    "--cg-tol", "1e-15", "--cg-max-iters", "100000000", "--output", out, "--report", report]
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
stderr_lines, cg_running = [], threading.Event()


def read_stderr():
    for line in proc.stderr:
        stderr_lines.append(line)
        if re.search(r"\bcg\s+\d+\s", line):
            cg_running.set()


reader = threading.Thread(target=read_stderr, daemon=True)
reader.start()
started = cg_running.wait(timeout=120)
check(started, "SIGTERM: CG's first progress line came within 120 s" +
      ("" if started else " (stderr: " + "".join(stderr_lines).strip()[-300:] + ")"))
if started:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        check(False, "SIGTERM: the job ended within 60 s of the signal")
if proc.poll() is None:
    proc.kill()
    proc.wait()
reader.join(timeout=10)
stderr = "".join(stderr_lines)
check(os.path.exists(out) and os.path.exists(report), f"SIGTERM: the iterate and the report are written (exit "
      f"{proc.returncode}; {stderr.strip()[-200:]})")
if os.path.exists(report):
    j = json.load(open(report))
    check(j["cg"]["termination"] == "interrupted" and j["cg"]["iterations"] > 0 and proc.returncode != 0,
          f"SIGTERM: the report says {j['cg']['termination']} at iteration {j['cg']['iterations']}, exit "
          f"{proc.returncode}")
    check(np.isfinite(flat(out)).all() and np.linalg.norm(flat(out)) > 0, "SIGTERM: the iterate is finite, nonzero")

# natgrad train: every minibatch shared by the ranks. Batches of 10 of the 101 samples end each epoch with a batch
# of 1, smaller than the ranks: a rank with no sample adds nothing. The parameters written by --save agree with
# one process to 1e-12 (the same steps, their sums in another order), and two runs under MPI write the same bytes.
train_data = p("categorical.safetensors")
train_common = ["train", "--model", p("categorical.json"), "--data", train_data, "--test-data", train_data,
                "--epochs", "2", "--batch", "10", "--seed", "5"]
# (CG stopped at a tolerance T: two solves whose sums differ in order agree to a fraction of T, not to rounding;
# test_train_distributed.cpp says more.)
for name, extra, tol in [
        ("adam", ["--optimizer", "adam", "--lr", "0.01"], 1e-12),
        ("natgrad cg", ["--optimizer", "natgrad", "--solver", "cg", "--curvature-batch", "4", "--cg-tol", "1e-10",
                        "--cg-backtrack", "off", "--damping", "0.1"], 1e-9),
        ("natgrad smw", ["--optimizer", "natgrad", "--solver", "smw", "--fisher", "mc", "--damping", "1"], 1e-11),
        ("kfac", ["--optimizer", "kfac", "--curvature-batch", "4", "--inverse-every", "3", "--damping", "1"], 1e-12)]:
    tag = "train_" + name.replace(" ", "_")
    outs = {}
    for k, mpi in (("one", False), ("mpi", True), ("mpi2", True)):
        r = run(train_common + extra + ["--save", p(f"{tag}_{k}.safetensors"), "--report", p(f"{tag}_{k}.json"),
                                        "--log", p(f"{tag}_{k}.csv")], mpi)
        check(r.returncode == 0, f"train {name} ({k}) exits 0 {r.stderr.strip()[-300:]}")
        if r.returncode != 0:
            break
        outs[k] = (json.load(open(p(f"{tag}_{k}.json"))), r.stdout)
    if len(outs) < 3:
        continue
    (one, _), (many, stdout) = outs["one"], outs["mpi"]
    check(many["ranks"] == ranks and one["ranks"] == 1 and f"ranks: {ranks}" in stdout.splitlines()[0],
          f"train {name}: the header and the report say ranks {many['ranks']}")
    check(many["steps"] == one["steps"] == 22, f"train {name}: {many['steps']} steps, one process {one['steps']}")
    e = rel(flat(p(f"{tag}_mpi.safetensors")), flat(p(f"{tag}_one.safetensors")))
    check(e <= tol, f"train {name}: --save parameters, relative difference {e:.1e} to one process")
    check(abs(many["test_loss"] - one["test_loss"]) <= tol * abs(one["test_loss"]),
          f"train {name}: test loss {many['test_loss']!r} vs {one['test_loss']!r}")
    same = open(p(f"{tag}_mpi.safetensors"), "rb").read() == open(p(f"{tag}_mpi2.safetensors"), "rb").read()
    check(same, f"train {name}: two runs on {ranks} ranks write the same --save bytes")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print(f"all checks passed on {ranks} ranks")
