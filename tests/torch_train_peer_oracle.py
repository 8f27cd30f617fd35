#!/usr/bin/env python3
"""The PyTorch training peer of the benchmarks (benchmarks/torch_train_peer.py) runs what `natgrad train` runs:
on a small IDX directory (300 training and 100 test images of 28 × 28, the test split gzip-compressed), in
float64, every row of its log against natgrad's — the same kinds, steps and epochs (the evaluation schedule:
--eval-every, the end of each epoch, a --max-time stop), the step losses and the test losses to 1e-10 relative,
the test accuracies equal — for Adam with natgrad's shuffled minibatches and initial parameters (seeded), SGD
with momentum in file order, the Hessian-free step of benchmarks/torch_hf_step.py against natgrad's with its
safeguards off (10 CG iterations warm-started, a curvature batch), and the autoencoder's bernoulli loss; in
float32 the first losses to 1e-5. Philox4x32-10 (benchmarks/natgrad_draws.py) against Random123's published
known-answer vectors. Exit 77 (ctest SKIP) without PyTorch, as every PyTorch oracle."""
import csv
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_oracle import Oracle  # noqa: E402  (first: it skips without PyTorch)
import numpy as np  # noqa: E402

benchmarks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, benchmarks)
from natgrad_draws import philox4x32  # noqa: E402

oracle = Oracle()

# Random123's kat_vectors for philox4x32_10: (counter, key) -> output.
for ctr, key, want in [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
                       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
                       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
                        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]:
    got = tuple(int(w) for w in philox4x32(ctr, key))
    if got != want:
        oracle.fail(f"philox4x32-10 of {ctr}, {key}: {[hex(w) for w in got]}, want {[hex(w) for w in want]}")

d = tempfile.mkdtemp()
rng = np.random.default_rng(0)


def write_idx(path, array, compress):
    head = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


for split, n, compress in [("train", 300, False), ("t10k", 100, True)]:
    labels = rng.integers(0, 10, n)
    # Images with a class-dependent mean, so training moves the accuracy.
    images = np.clip(rng.normal(40 + 18 * labels[:, None, None], 60, (n, 28, 28)), 0, 255)
    gz = ".gz" if compress else ""
    write_idx(os.path.join(d, f"{split}-images-idx3-ubyte{gz}"), images, compress)
    write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte{gz}"), labels, compress)


def mlp_json(path, sizes, act, lik, code=None):
    layers = [{"type": "flatten"}]
    for i in range(len(sizes) - 1):
        layers.append({"type": "linear", "in_features": sizes[i], "out_features": sizes[i + 1]})
        if i < len(sizes) - 2 and sizes[i + 1] != code:
            layers.append({"type": act})
    json.dump({"input_shape": [1, 28, 28], "likelihood": lik, "layers": layers}, open(path, "w"))


classifier, autoencoder = os.path.join(d, "classifier.json"), os.path.join(d, "autoencoder.json")
mlp_json(classifier, [784, 256, 256, 10], "relu", "categorical")
mlp_json(autoencoder, [784, 1000, 500, 250, 30, 250, 500, 1000, 784], "sigmoid", "bernoulli", code=30)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def compare(tag, natgrad_args, peer_args, bound=1e-10, autoencoder_run=False):
    ng, pt = os.path.join(d, tag + "_natgrad.csv"), os.path.join(d, tag + "_torch.csv")
    oracle.run("train", "--model", autoencoder if autoencoder_run else classifier, "--data", d, "--threads", "1",
               "--quiet", "--log", ng, *(["--autoencoder"] if autoencoder_run else []), *natgrad_args)
    r = subprocess.run([sys.executable, os.path.join(benchmarks, "torch_train_peer.py"), "--data", d, "--threads", "1",
                        "--quiet", "--log", pt, *(["--autoencoder"] if autoencoder_run else []), *peer_args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        oracle.fail(f"{tag}: torch_train_peer.py failed: {r.stderr.strip()[-300:]}")
        return
    a, b = rows(ng), rows(pt)
    shape = [(x["kind"], x["step"], x["epoch"]) for x in a]
    peer_shape = [(x["kind"], x["step"], x["epoch"]) for x in b]
    if shape != peer_shape:
        oracle.fail(f"{tag}: the logs' rows differ: natgrad {shape}, torch {peer_shape}")
        return
    worst = 0.0
    for x, y in zip(a, b):
        for key in ("loss", "test_loss"):
            if (x[key] == "") != (y[key] == ""):
                oracle.fail(f"{tag}: {key} at row {x['kind']} {x['step']}: natgrad {x[key]!r}, torch {y[key]!r}")
            elif x[key]:
                worst = max(worst, abs(float(x[key]) - float(y[key])) / abs(float(x[key])))
        for key in ("lr", "damping", "cg_iterations", "test_accuracy"):
            if (x[key] == "") != (y[key] == "") or (x[key] and float(x[key]) != float(y[key])):
                oracle.fail(f"{tag}: {key} at row {x['kind']} {x['step']}: natgrad {x[key]!r}, torch {y[key]!r}")
    oracle.check(f"{tag}: {len(a)} rows, losses", worst, bound)


f64 = ["--dtype", "float64"]
compare("adam, shuffled, eval every 3", [*f64, "--optimizer", "adam", "--lr", "3e-3", "--batch", "64", "--epochs", "2",
                                         "--eval-every", "3", "--seed", "7"],
        [*f64, "--lr", "3e-3", "--batch", "64", "--epochs", "2", "--eval-every", "3", "--seed", "7"])
compare("sgd with momentum, in file order", [*f64, "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--batch",
                                             "64", "--epochs", "2", "--no-shuffle", "--seed", "3"],
        [*f64, "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--batch", "64", "--epochs", "2",
         "--no-shuffle", "--seed", "3"])
hf = ["--optimizer", "natgrad", "--solver", "cg", "--cg-max-iters", "10", "--cg-tol", "1e-12", "--damping-adapt", "off",
      "--line-search", "off", "--damping", "0.5", "--lr", "0.8", "--curvature-batch", "40"]
compare("hf step (10 CG iterations, curvature batch 40)",
        [*f64, *hf, "--batch", "100", "--epochs", "2", "--seed", "5"],
        [*f64, "--optimizer", "hf", "--damping", "0.5", "--lr", "0.8", "--curvature-batch", "40", "--batch", "100",
         "--epochs", "2", "--seed", "5"], bound=1e-9)
# --max-time far below a step: the run stops after its first step and evaluates (epoch 0 completed).
compare("adam, --max-time stop", [*f64, "--optimizer", "adam", "--batch", "64", "--max-time", "1e-9", "--seed", "2"],
        [*f64, "--batch", "64", "--max-time", "1e-9", "--seed", "2"])
compare("autoencoder, adam", [*f64, "--optimizer", "adam", "--batch", "100", "--epochs", "1", "--eval-every", "2",
                              "--seed", "4"],
        [*f64, "--batch", "100", "--epochs", "1", "--eval-every", "2", "--seed", "4"], autoencoder_run=True)
compare("adam in float32", ["--optimizer", "adam", "--batch", "100", "--epochs", "1", "--seed", "6"],
        ["--batch", "100", "--epochs", "1", "--seed", "6"], bound=1e-5)
oracle.finish()
