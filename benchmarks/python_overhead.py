#!/usr/bin/env python3
"""The Python package's overhead and speed targets (issue 28), measured in one run, on the same threads:

  (a) natgrad.Fisher.matvec on the benchmark MLP (784-1024-1024-10 tanh, categorical, batch 1000, float32, exact
      Fisher) against natgrad-bench's mlp/fvp_exact: target ≤ 1.10×;
  (b) natgrad.optim.NaturalGradient.step with λ fixed at 1, exactly 10 CG iterations warm-started from 0.95 × the
      previous direction, no line search (natgrad-bench's train/step_natgrad_cg10, the same settings) against
      that entry: target ≤ 1.10×;
  (c) the same step against a PyTorch Hessian-free step with exactly 10 CG iterations
      (benchmarks/torch_hf_step.py's HessianFreeStep), each product recipe timed, the fastest counting:
      target natgrad ≥ 2× faster.

    PYTHONPATH=build/python /usr/bin/python3 benchmarks/python_overhead.py build/benchmarks/natgrad-bench

natgrad-bench runs with OMP_NUM_THREADS=--threads; here torch.set_num_threads(--threads) and threads=--threads
for natgrad. Times are medians: (a) of --reps repetitions of natgrad-bench's fvp (each its own mean over the
iterations Google Benchmark chooses) and of --matvecs products in Python, v a torch tensor; (b) of --reps
repetitions of 10 steps from a fresh optimizer (each rep's mean per step, as natgrad-bench's Iterations(10)
entry); (c) per step after one warm-up step, steps continuing from each other, as torch_hf_step.py times its
own, for natgrad and each recipe alike. Prints a markdown table. Run on a quiet machine: timings under load mean
nothing."""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import natgrad

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_hf_step  # noqa: E402  (the PyTorch peer, imported: one copy of it)

SHAPE = [784]
BATCH = 1000
# train/step_natgrad_cg10's settings (benchmarks/train_steps.cpp), the rest natgrad's defaults: lr 1, damping 1,
# CG warm-started from 0.95 × the previous direction; without the damping rule no backtracking.
CG_STEP = dict(solver="cg", cg_max_iterations=10, cg_tolerance=1e-12, adapt_damping=False, line_search=False)
LR, DAMPING, WARM = 1.0, 1.0, 0.95  # (the PyTorch peer's, natgrad's defaults)


def bench_median_ms(binary, name, threads, reps):
    """natgrad-bench's median real time of the entry `name` over `reps` repetitions, in ms. (Its full names carry
    suffixes: mlp/fvp_exact/real_time, train/step_natgrad_cg10/iterations:10/real_time.)"""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([binary, f"--benchmark_filter=^{name}/", f"--benchmark_repetitions={reps}",
                        "--benchmark_report_aggregates_only=true", "--benchmark_format=json"],
                       env=env, capture_output=True, text=True)
    try:
        runs = json.loads(r.stdout)["benchmarks"]
    except (ValueError, KeyError):
        raise SystemExit(f"{binary} {name}: exit {r.returncode}, no JSON report: {(r.stderr or r.stdout).strip()}")
    for b in runs:
        if b.get("aggregate_name") == "median":
            scale = {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b["time_unit"]]
            return b["real_time"] * scale
    raise SystemExit(f"{binary}: no median for {name} (is it natgrad-bench, and does it have {name}?)")


def matvec_ms(module, x, y, threads, matvecs):
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, SHAPE), x, y, kind="exact", dtype="float32",
                            threads=threads)
    v = torch.randn(fisher.num_params)
    fisher.matvec(v)  # (warm-up)
    times = []
    for _ in range(matvecs):
        t0 = time.perf_counter()
        fisher.matvec(v)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def natgrad_steps(module, x, y, threads, reps):
    """(b) the median over reps of the mean step time of 10 steps from a fresh optimizer; (c) the median step
    time after each rep's first step. ms."""
    means, continued = [], []
    for _ in range(reps):
        net = copy.deepcopy(module)
        opt = natgrad.optim.NaturalGradient(net, SHAPE, dtype="float32", threads=threads, **CG_STEP)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            opt.step(x, y)
            times.append(time.perf_counter() - t0)
            assert opt.last_step["cg_iterations"] == 10, opt.last_step
        means.append(statistics.mean(times))
        continued.extend(times[1:])
    return 1e3 * statistics.median(means), 1e3 * statistics.median(continued)


def torch_hf_ms(module, x, y, reps):
    """Each recipe's median step time after one warm-up step (torch_hf_step.py's own protocol), ms."""
    out = {}
    for recipe in torch_hf_step.RECIPES:
        net = copy.deepcopy(module)
        hf = torch_hf_step.HessianFreeStep(net, "categorical", recipe, damping=DAMPING, lr=LR, cg_iters=10,
                                           warm=WARM)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            hf.step(x, y)
            times.append(time.perf_counter() - t0)
        out[recipe] = 1e3 * statistics.median(times[1:])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("natgrad_bench", help="the natgrad-bench binary (build/benchmarks/natgrad-bench)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="repetitions (natgrad-bench's, the steps' reps)")
    ap.add_argument("--matvecs", type=int, default=30, help="products timed in Python for (a)")
    a = ap.parse_args()
    if not os.access(a.natgrad_bench, os.X_OK):
        raise SystemExit(f"{a.natgrad_bench}: not an executable; give the natgrad-bench binary")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    module = torch_hf_step.mlp([784, 1024, 1024, 10], torch.nn.Tanh)
    x, y = torch.rand(BATCH, 784), torch.randint(0, 10, (BATCH,))

    fvp_cpp = bench_median_ms(a.natgrad_bench, "mlp/fvp_exact", a.threads, a.reps)
    step_cpp = bench_median_ms(a.natgrad_bench, "train/step_natgrad_cg10", a.threads, a.reps)
    fvp_py = matvec_ms(module, x, y, a.threads, a.matvecs)
    step_py, step_py_continued = natgrad_steps(module, x, y, a.threads, a.reps)
    hf = torch_hf_ms(module, x, y, a.reps)
    fastest = min(hf, key=hf.get)

    print(f"natgrad {a.natgrad_bench}, PyTorch {torch.__version__}; MLP 784-1024-1024-10 tanh, batch {BATCH}, "
          f"float32; {a.threads} threads (natgrad and PyTorch); medians of {a.reps} repetitions\n")
    print("| target | Python | reference | ratio | goal |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| (a) `Fisher.matvec` vs `natgrad-bench` mlp/fvp_exact | {fvp_py:.2f} ms | {fvp_cpp:.2f} ms | "
          f"{fvp_py / fvp_cpp:.3f}× | ≤ 1.10× |")
    print(f"| (b) `NaturalGradient.step` (λ fixed, 10 CG iterations) vs train/step_natgrad_cg10 | {step_py:.2f} ms | "
          f"{step_cpp:.2f} ms | {step_py / step_cpp:.3f}× | ≤ 1.10× |")
    print(f"| (c) PyTorch Hessian-free step (10 CG iterations, fastest recipe: {fastest}) vs `NaturalGradient.step` | "
          f"{step_py_continued:.2f} ms | {hf[fastest]:.2f} ms | {hf[fastest] / step_py_continued:.2f}× faster | "
          f"≥ 2× |")
    print("\nPyTorch's recipes (per step, after a warm-up step): " +
          ", ".join(f"{r} {t:.2f} ms" for r, t in hf.items()))


if __name__ == "__main__":
    main()
