#!/usr/bin/env python3
"""natgrad's training steps against PyTorch's on this machine, in one run, as ratios (natgrad / PyTorch; below 1:
natgrad is faster). Three comparisons, each natgrad and its peer one after the other with the same threads:

  adam epoch   one epoch of Adam (lr 1e-3) on Fashion-MNIST, MLP 784-256-256-10 relu, batch 128, seed --seed:
               `natgrad train` against benchmarks/torch_train_peer.py (the same initial parameters and
               minibatches; their first losses are printed side by side as a check), training time from each
               log (evaluation excluded), and the median milliseconds per step;
  hf step      the second-order step on natgrad-bench's MLP (784-1024-1024-10 tanh, batch 1000): natgrad-bench's
               train/step_natgrad_cg10 against benchmarks/torch_hf_step.py (the fastest of its three Fisher-product
               recipes), each also as a ratio to its own gradient (mlp/gradient; PyTorch's gradient_s);
  hf training  the same step inside training, on the Fashion-MNIST MLP: `natgrad train --optimizer natgrad
               --solver cg --cg-max-iters 10 --cg-tol 1e-12 --damping-adapt off --line-search off` against
               torch_train_peer.py --optimizer hf, --hf-time seconds each, median milliseconds per step.

    python3 benchmarks/compare_torch_train.py build                  # the whole comparison (a few minutes)
    python3 benchmarks/compare_torch_train.py build --max-time 2 --hf-time 2 --reps 2   # a smoke test

--max-time S cuts the Adam epoch after S seconds of training (the epoch's time is then extrapolated from the
steps taken, and says so). Timings mean something only on an otherwise idle machine: on a shared one, OpenMP
threads wait for each other and both sides slow down by different factors. Standard library only; the PyTorch
side runs under --torch-python (default /usr/bin/python3, Debian's python3-torch)."""
import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"compare_torch_train.py: {' '.join(cmd[:3])} … failed ({p.returncode}): "
                 f"{(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return p.stdout


def steps_of(log):
    """(time_s, loss) of the log's step rows."""
    with open(log, newline="") as f:
        return [(float(r["time_s"]), float(r["loss"])) for r in csv.DictReader(f) if r["kind"] == "step"]


def step_times(rows):
    """The per-step durations after the first (the first holds one-time costs on either side)."""
    t = [s[0] for s in rows]
    return [b - a for a, b in zip(t, t[1:])]


def ratio(a, b):
    return f"{a / b:.2f}" if b > 0 else "—"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", help="natgrad's build directory (apps/natgrad, benchmarks/natgrad-bench)")
    ap.add_argument("--data", default=os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-time", type=float, default=0, help="cut the Adam epoch after S s (0: the whole epoch)")
    ap.add_argument("--hf-time", type=float, default=20, help="seconds of HF training on each side")
    ap.add_argument("--reps", type=int, default=5, help="torch_hf_step.py's repetitions")
    ap.add_argument("--torch-python", default="/usr/bin/python3")
    ap.add_argument("--only", choices=["adam", "hf", "hf-training"], help="one comparison only")
    a = ap.parse_args()
    natgrad = os.path.join(a.build, "apps", "natgrad")
    bench = os.path.join(a.build, "benchmarks", "natgrad-bench")
    peer = [a.torch_python, os.path.join(HERE, "torch_train_peer.py"), "--data", a.data, "--seed", str(a.seed),
            "--threads", str(a.threads), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {a.threads} threads; load average {os.getloadavg()[0]:.2f} "
          f"(timings mean something when it is about 0)")
    tmp = tempfile.mkdtemp(prefix="natgrad_vs_torch_")
    model = os.path.join(tmp, "classifier.json")
    layers = [{"type": "flatten"}]
    for i, (m, n) in enumerate([(784, 256), (256, 256), (256, 10)]):
        layers.append({"type": "linear", "in_features": m, "out_features": n})
        if i < 2:
            layers.append({"type": "relu"})
    json.dump({"input_shape": [1, 28, 28], "likelihood": "categorical", "layers": layers}, open(model, "w"))
    common = ["--model", model, "--data", a.data, "--seed", str(a.seed), "--threads", str(a.threads), "--quiet",
              "--batch", "128", "--epochs", "1"]
    per_epoch = 469  # ⌈60000 / 128⌉

    if a.only in (None, "adam"):
        cut = ["--max-time", str(a.max_time)] if a.max_time > 0 else []
        ng_log, pt_log = os.path.join(tmp, "natgrad_adam.csv"), os.path.join(tmp, "torch_adam.csv")
        run([natgrad, "train", *common, "--optimizer", "adam", "--lr", "1e-3", "--log", ng_log, *cut], env)
        run([*peer, "--batch", "128", "--epochs", "1", "--lr", "1e-3", "--log", pt_log, *cut], env)
        ng, pt = steps_of(ng_log), steps_of(pt_log)
        print(f"first losses (the same run?): natgrad {[round(s[1], 6) for s in ng[:3]]}, "
              f"pytorch {[round(s[1], 6) for s in pt[:3]]}")

        def epoch(rows):
            if len(rows) == per_epoch:
                return rows[-1][0], ""
            return rows[-1][0] / len(rows) * per_epoch, f" (extrapolated from {len(rows)} steps)"
        (te_ng, note_ng), (te_pt, note_pt) = epoch(ng), epoch(pt)
        ms_ng, ms_pt = 1e3 * statistics.median(step_times(ng)), 1e3 * statistics.median(step_times(pt))
        print(f"adam epoch: natgrad {te_ng:.2f} s{note_ng}, pytorch {te_pt:.2f} s{note_pt}, "
              f"ratio {ratio(te_ng, te_pt)}")
        print(f"adam step (median): natgrad {ms_ng:.2f} ms, pytorch {ms_pt:.2f} ms, ratio {ratio(ms_ng, ms_pt)}")

    fastest = "forward_ad"
    if a.only in (None, "hf"):
        if not os.path.exists(bench):
            print(f"hf step: skipped ({bench} is not built: cmake --build {a.build} --target natgrad-bench)")
        else:
            out = run([bench, "--benchmark_filter=^(mlp/gradient|train/step_natgrad_cg10)/", "--benchmark_format=json"],
                      env)
            ms = {b["name"].split("/")[1]: b["real_time"] for b in json.loads(out)["benchmarks"]}
            text = run([a.torch_python, os.path.join(HERE, "torch_hf_step.py"), "--threads", str(a.threads),
                        "--reps", str(a.reps)], env)
            got = dict(re.findall(r"^(\w+_s) ([0-9.]+)", text, re.M))
            fastest = re.search(r"fastest recipe: (\w+)", text).group(1)
            ng_s, ng_g = ms["step_natgrad_cg10"] / 1e3, ms["gradient"] / 1e3
            pt_s, pt_g = float(got["hf_step_s"]), float(got["gradient_s"])
            print("pytorch's recipes: " + ", ".join(f"{k[8:-2]} {float(v):.3f} s" for k, v in got.items()
                                                    if k.startswith("hf_step_") and k != "hf_step_s"))
            print(f"hf step (benchmark MLP, batch 1000, 10 CG iterations): natgrad {ng_s:.3f} s, pytorch {pt_s:.3f} s "
                  f"({fastest}), ratio {ratio(ng_s, pt_s)}; per gradient: natgrad {ng_s / ng_g:.1f}, "
                  f"pytorch {pt_s / pt_g:.1f}; gradients natgrad {1e3 * ng_g:.1f} ms, pytorch {1e3 * pt_g:.1f} ms")

    if a.only in (None, "hf-training"):
        ng_log, pt_log = os.path.join(tmp, "natgrad_hf.csv"), os.path.join(tmp, "torch_hf.csv")
        run([natgrad, "train", *common, "--optimizer", "natgrad", "--solver", "cg", "--cg-max-iters", "10",
             "--cg-tol", "1e-12", "--damping-adapt", "off", "--line-search", "off", "--damping", "1",
             "--max-time", str(a.hf_time), "--log", ng_log], env)
        run([*peer, "--batch", "128", "--epochs", "1", "--optimizer", "hf", "--recipe", fastest, "--damping", "1",
             "--max-time", str(a.hf_time), "--log", pt_log], env)
        ng, pt = steps_of(ng_log), steps_of(pt_log)
        if len(ng) < 2 or len(pt) < 2:
            print(f"hf training: too few steps for a median (natgrad {len(ng)}, pytorch {len(pt)}); raise --hf-time")
        else:
            ms_ng, ms_pt = 1e3 * statistics.median(step_times(ng)), 1e3 * statistics.median(step_times(pt))
            k = min(len(ng), len(pt))
            print(f"hf training (Fashion-MNIST MLP, batch 128): natgrad {ms_ng:.1f} ms/step ({len(ng)} steps), "
                  f"pytorch {ms_pt:.1f} ms/step ({len(pt)} steps, {fastest}), ratio {ratio(ms_ng, ms_pt)}; "
                  f"loss after {k} steps natgrad {ng[k - 1][1]:.5f}, pytorch {pt[k - 1][1]:.5f}")
    print(f"logs in {tmp}")


if __name__ == "__main__":
    main()
