#!/usr/bin/env python3
"""The PyTorch peer of benchmarks/train_fashion_mnist.sh: the same Fashion-MNIST runs with torch.optim.Adam (or
torch.optim.SGD; or --optimizer hf, the Hessian-free step of benchmarks/torch_hf_step.py, natgrad's step with
--solver cg --cg-max-iters 10 --damping-adapt off --line-search off), writing natgrad train's CSV log (--log: the
same columns, rows and schedule), so that benchmarks/train_table.py and `natgrad plot` read both alike.

  classifier   MLP 784-256-256-10 relu, F.cross_entropy (the mean over the batch);
  --autoencoder 784-1000-500-250-30-250-500-1000-784 sigmoid, linear code layer, the inputs as targets,
               BCEWithLogits summed over pixels and averaged over the batch (natgrad's bernoulli loss).

It runs what `natgrad train --seed S` runs, value for value where natgrad defines the values: the same initial
parameters (natgrad's Philox draws, benchmarks/natgrad_draws.py; not PyTorch's own generator), the same
minibatches (the epoch's permutation keyed by (seed, epoch); --no-shuffle: file order), the inputs scaled as
natgrad's IDX reader does (uint8 / 255 in the dtype), evaluation on the t10k split by --eval-every as natgrad's
trainer schedules it (every K steps, else after each epoch; the end of the run, or a --max-time stop, evaluates
when the last row is not an evaluation), and time_s the training time: each step's forward, backward and update,
timed like natgrad's (the gathering of the batch and the evaluations excluded). The log's losses are the step's
batch loss before its update; eval rows hold test_loss (and test_accuracy for the classifier).

    /usr/bin/python3 benchmarks/torch_train_peer.py --lr 1e-3 --seed 1 --epochs 10 --eval-every 94 --log adam.csv
    /usr/bin/python3 benchmarks/torch_train_peer.py --autoencoder --batch 256 --max-time 150 --eval-every 50 \\
        --epochs 1000 --log ae_adam.csv

Needs PyTorch (Debian's python3-torch: run it with /usr/bin/python3) and NumPy. --threads sets
torch.set_num_threads (default 2, as the comparison)."""
import argparse
import gzip
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from natgrad_draws import epoch_order, linear_init  # noqa: E402
from torch_hf_step import RECIPES, HessianFreeStep  # noqa: E402

CLASSIFIER = [784, 256, 256, 10]
AUTOENCODER = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
HEADER = "kind,step,epoch,time_s,loss,lr,damping,cg_iterations,test_loss,test_accuracy"


def read_idx(path):
    """An IDX file, gzip-compressed or not, as a uint8 array of its dims."""
    with open(path, "rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind != 0x08:
        sys.exit(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(directory, stem):
    for name in (stem + ".gz", stem):  # (natgrad's reader looks for the .gz first)
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    sys.exit(f"{directory}: no {stem} or {stem}.gz (an IDX directory: train-*, t10k-*)")


def load_split(directory, split, dtype):
    """Inputs [N, 784] scaled as natgrad's reader (pixel / 255 in dtype) and labels [N] (int64)."""
    images = read_idx(find(directory, f"{split}-images-idx3-ubyte"))
    labels = read_idx(find(directory, f"{split}-labels-idx1-ubyte"))
    x = images.reshape(len(images), -1).astype(dtype) / dtype(255)
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def build(sizes, activation, code, seed, dtype):
    """The chain of linear layers with natgrad's initial parameters (nn.Linear's bound, natgrad's draws)."""
    layers = []
    for i, (w, b) in enumerate(linear_init(sizes, seed, dtype)):
        lin = torch.nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(sizes) - 2 and sizes[i + 1] != code:
            layers.append(activation())
    return torch.nn.Sequential(*layers)


def field(v):
    return "" if v is None or math.isnan(v) else repr(float(v))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"),
                    help="IDX directory (train-* and t10k-*, gzip or not)")
    ap.add_argument("--autoencoder", action="store_true", help="the deep autoencoder on the pixels")
    ap.add_argument("--optimizer", choices=["adam", "sgd", "hf"], default="adam",
                    help="hf: torch_hf_step.py's Hessian-free step (natgrad's with --solver cg --cg-max-iters "
                         "--damping-adapt off --line-search off)")
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 for adam, 1e-2 for sgd, 1 for hf (natgrad's)")
    ap.add_argument("--damping", type=float, default=1.0, help="hf: λ, fixed")
    ap.add_argument("--cg-iters", type=int, default=10, help="hf: CG iterations per step, exactly")
    ap.add_argument("--curvature-batch", type=int, default=0, help="hf: curvature on the first B2 samples (0: all)")
    ap.add_argument("--recipe", choices=RECIPES, default="forward_ad", help="hf: the Fisher product's recipe")
    ap.add_argument("--momentum", type=float, default=0.0, help="sgd only")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=0, help="evaluate every K steps (0: after each epoch)")
    ap.add_argument("--max-time", type=float, default=0.0, help="stop after S seconds of training (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-shuffle", action="store_true", help="minibatches in file order")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", help="write natgrad train's CSV log here")
    ap.add_argument("--quiet", action="store_true", help="no per-evaluation lines")
    a = ap.parse_args()
    if a.optimizer != "sgd" and a.momentum:
        sys.exit(f"torch_train_peer.py: --momentum is for sgd; {a.optimizer} takes none here")
    if a.batch < 1 or a.epochs < 1 or a.eval_every < 0 or a.max_time < 0:
        sys.exit("torch_train_peer.py: --batch and --epochs must be >= 1, --eval-every and --max-time >= 0")
    lr = a.lr if a.lr is not None else {"adam": 1e-3, "sgd": 1e-2, "hf": 1.0}[a.optimizer]
    torch.set_num_threads(a.threads)
    dtype = np.float32 if a.dtype == "float32" else np.float64
    torch.set_default_dtype(torch.float32 if a.dtype == "float32" else torch.float64)

    x, y = load_split(a.data, "train", dtype)
    xt, yt = load_split(a.data, "t10k", dtype)
    if a.autoencoder:
        net = build(AUTOENCODER, torch.nn.Sigmoid, 30, a.seed, dtype)

        def loss_of(z, xb, _):  # natgrad's bernoulli: the sum over pixels, the mean over the batch
            return F.binary_cross_entropy_with_logits(z, xb, reduction="sum") / xb.shape[0]
    else:
        net = build(CLASSIFIER, torch.nn.ReLU, None, a.seed, dtype)

        def loss_of(z, _, yb):
            return F.cross_entropy(z, yb)
    params = list(net.parameters())
    if a.optimizer == "hf":
        hf = HessianFreeStep(net, "bernoulli" if a.autoencoder else "categorical", a.recipe, a.damping, lr,
                             a.cg_iters, curvature_batch=a.curvature_batch)

        def take_step(xb, yb):
            return hf.step(xb, xb if a.autoencoder else yb).item()
    else:
        opt = torch.optim.Adam(params, lr=lr) if a.optimizer == "adam" else \
            torch.optim.SGD(params, lr=lr, momentum=a.momentum)

        def take_step(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(net(xb), xb, yb)
            loss.backward()
            opt.step()
            return loss.item()
    extra = f"{field(a.damping)},{a.cg_iters}" if a.optimizer == "hf" else ","

    def evaluate():
        with torch.no_grad():
            z = net(xt)
            loss = loss_of(z, xt, yt).item()
            accuracy = math.nan if a.autoencoder else (z.argmax(1) == yt).double().mean().item()
        return loss, accuracy

    n = len(x)
    per_epoch = (n + a.batch - 1) // a.batch
    print(f"pytorch-{torch.__version__} {a.optimizer} lr {lr:g}: {'autoencoder' if a.autoencoder else 'classifier'} "
          f"{sum(p.numel() for p in params)} parameters, {n} samples, batch {a.batch}, {per_epoch} steps per epoch, "
          f"{torch.get_num_threads()} threads, {a.dtype}, seed {a.seed}", flush=True)
    rows = [HEADER]
    trained, steps, completed, stopped = 0.0, 0, 0, False
    last_eval = [False]

    def evaluation(epoch, train_loss):
        loss, accuracy = evaluate()
        rows.append(f"eval,{steps},{epoch},{field(trained)},,,,,{field(loss)},{field(accuracy)}")
        last_eval[0] = True
        if not a.quiet:
            head = "" if math.isnan(train_loss) else f"train loss {train_loss:.6g}, "
            print(f"epoch {epoch}, step {steps}: {head}test loss {loss:.6g}, test accuracy {field(accuracy)}, "
                  f"{trained:.2f} s", flush=True)

    for epoch in range(a.epochs):
        order = torch.from_numpy(epoch_order(n, a.seed, epoch, not a.no_shuffle))
        loss_sum, seen = 0.0, 0
        for k in range(per_epoch):
            if a.max_time > 0 and trained >= a.max_time:
                stopped = True
                break
            idx = order[k * a.batch:(k + 1) * a.batch]
            xb, yb = x[idx], y[idx]  # (the batch's gathering: outside the timed step, as natgrad's)
            t0 = time.perf_counter()
            value = take_step(xb, yb)
            trained += time.perf_counter() - t0
            steps += 1
            loss_sum += value * len(idx)
            seen += len(idx)
            rows.append(f"step,{steps},{epoch + 1},{field(trained)},{field(value)},{field(lr)},{extra},,")
            last_eval[0] = False
            if not math.isfinite(value):
                sys.exit(f"torch_train_peer.py: the loss is not finite at step {steps}")
            if a.eval_every > 0 and steps % a.eval_every == 0:
                evaluation(epoch + (1 if k + 1 == per_epoch else 0), math.nan)
        if stopped:
            break
        completed = epoch + 1
        if a.eval_every == 0 or (epoch + 1 == a.epochs and not last_eval[0]):
            evaluation(epoch + 1, loss_sum / seen)
    if stopped and not last_eval[0]:
        evaluation(completed, math.nan)
    if a.log:
        with open(a.log + ".tmp", "w") as f:
            f.write("\n".join(rows) + "\n")
        os.replace(a.log + ".tmp", a.log)
    print(f"trained {steps} steps ({completed} epochs completed) in {trained:.2f} s", flush=True)


if __name__ == "__main__":
    main()
