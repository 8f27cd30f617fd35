#!/usr/bin/env python3
"""natgrad train against PyTorch in float64: on a small MLP and batches in file order
(--no-shuffle: [0, 8), [8, 16), [16, 20) as DataLoader(shuffle=False) gives them), the parameters after three
epochs of torch.optim.Adam, of torch.optim.SGD with momentum, and of natural-gradient steps
θ ← θ − η(F + λI)⁻¹g with the damping fixed (F the exact Fisher built densely from PyTorch's Jacobian-vector
products, solved by torch.linalg.solve; with the safeguards off, and once with momentum, s = −η d + μ s_prev) —
each against `natgrad train --save`'s, to 1e-10 relative (the Gram solve) or 1e-8 (CG to 1e-12). Then the
report and log agree with the run (natgrad's per-epoch damping and CG iterations too), and bad options end
with one line. On text (--context T), byte-level models (an embedding and a linear head; a causal one-layer
transformer) trained by Adam on the windows before the held-out tail, against F.cross_entropy over positions,
and the tail's loss and per-position accuracy in the report against PyTorch's. A residual graph with batch norm
trained by Adam against PyTorch's module in .eval() mode (running statistics fixed, and --save's the input's).
Exit code 77 (ctest SKIP) when PyTorch is not installed, 1 with NATGRAD_REQUIRE_TORCH=1 (torch_oracle.py)."""
import copy
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_oracle import Oracle, export_case, export_model, load_safetensors  # noqa: E402  (first)
from torch_reference import dense_fisher, flat, rel  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

oracle = Oracle()
torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
N, B, EPOCHS = 20, 8, 3
model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
x, y = torch.randn(N, 5), torch.randint(0, 3, (N,))
d, _, common = export_case(model, [5], "categorical", x, y)
batches = [(x[k:k + B], y[k:k + B]) for k in range(0, N, B)]


def trained(args, tag):
    out = os.path.join(d, tag + ".safetensors")
    oracle.run("train", *common, "--epochs", str(EPOCHS), "--batch", str(B), "--no-shuffle", "--save", out,
               "--report", os.path.join(d, tag + ".json"), "--log", os.path.join(d, tag + ".csv"), *args)
    saved = load_safetensors(out)
    return flat([saved[n] for n, _ in model.named_parameters()])


def torch_first_order(make):
    m = copy.deepcopy(model)
    opt = make(m.parameters())
    for _ in range(EPOCHS):
        for xb, yb in batches:
            opt.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            opt.step()
    return flat([p.detach() for p in m.parameters()])


ours = trained(["--optimizer", "adam", "--lr", "0.01"], "adam")
oracle.check("adam (lr 0.01), 3 epochs of 3 batches", rel(ours, torch_first_order(lambda p: torch.optim.Adam(p, lr=0.01))), 1e-10)
ours = trained(["--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"], "sgd")
oracle.check("sgd (lr 0.05, momentum 0.9)",
             rel(ours, torch_first_order(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))), 1e-10)


def torch_natural_gradient(lr, lam, mu=0.0):
    m = copy.deepcopy(model)
    previous = None  # the previous update s (momentum: s = -lr d + mu s_prev)
    for _ in range(EPOCHS):
        for xb, yb in batches:
            params = list(m.parameters())
            g = flat(torch.autograd.grad(F.cross_entropy(m(xb), yb), params))
            Fd = dense_fisher(m, xb, yb, "categorical")
            s = -lr * torch.linalg.solve(Fd + lam * torch.eye(Fd.shape[0]), g)
            if previous is not None:
                s = s + mu * previous
            previous = s
            with torch.no_grad():
                offset = 0
                for p in params:
                    p += s[offset:offset + p.numel()].reshape(p.shape)
                    offset += p.numel()
    return flat([p.detach() for p in m.parameters()])


want = torch_natural_gradient(0.5, 0.1)
# The plain step needs the safeguards off: no Levenberg-Marquardt rule, no line search (and so no backtracking).
fixed = ["--optimizer", "natgrad", "--lr", "0.5", "--damping", "0.1", "--damping-adapt", "off", "--line-search", "off"]
oracle.check("natgrad, λ 0.1 fixed, the Gram solve", rel(trained(fixed + ["--solver", "smw"], "ng_smw"), want), 1e-10)
oracle.check("natgrad, λ 0.1 fixed, CG to 1e-12",
             rel(trained(fixed + ["--solver", "cg", "--cg-tol", "1e-12", "--cg-max-iters", "500"], "ng_cg"), want), 1e-8)
oracle.check("natgrad with momentum 0.5, the Gram solve",
             rel(trained(fixed + ["--solver", "smw", "--momentum", "0.5"], "ng_momentum"), torch_natural_gradient(0.5, 0.1, 0.5)),
             1e-10)
# With the safeguards on (the defaults), the report's epochs hold natgrad's damping at the epoch's end (the λ
# the next epoch's first step solved with, in the log) and CG's mean iterations per step (the log's mean).
trained(["--optimizer", "natgrad", "--solver", "cg"], "ng_default")
epochs = json.load(open(os.path.join(d, "ng_default.json")))["epochs"]
ng_rows = [r for r in csv.DictReader(open(os.path.join(d, "ng_default.csv"))) if r["kind"] == "step"]
mean_cg = [sum(int(r["cg_iterations"]) for r in ng_rows[3 * e:3 * e + 3]) / 3 for e in range(3)]
if not (len(epochs) == 3 and [e["cg_iterations"] for e in epochs] == mean_cg and min(mean_cg) > 0
        and [e["damping"] for e in epochs[:2]] == [float(ng_rows[3]["damping"]), float(ng_rows[6]["damping"])]):
    oracle.fail(f"natgrad's report epochs {epochs} against the log's damping and cg_iterations {mean_cg}")

# The report and the log of the Adam run.
report = json.load(open(os.path.join(d, "adam.json")))
rows = list(csv.DictReader(open(os.path.join(d, "adam.csv"))))
steps = [r for r in rows if r["kind"] == "step"]
ok = (report["optimizer"] == "adam" and report["steps"] == 9 and len(report["epochs"]) == 3 and len(steps) == 9
      and [int(r["step"]) for r in steps] == list(range(1, 10)))
if not ok:
    oracle.fail(f"adam's report and log: steps {report['steps']}, epochs {len(report['epochs'])}, rows {len(steps)}")
# The first step's loss in the log is PyTorch's cross-entropy at the initial parameters on batch 0.
first = float(steps[0]["loss"])
oracle.check("the log's first loss vs F.cross_entropy", abs(first - F.cross_entropy(model(batches[0][0]), batches[0][1]).item()), 1e-12)
# train_loss of epoch 1: the sample-weighted mean of its three steps' losses.
losses = [float(r["loss"]) for r in steps[:3]]
oracle.check("epoch 1's train_loss is its steps' weighted mean",
             abs(report["epochs"][0]["train_loss"] - (8 * losses[0] + 8 * losses[1] + 4 * losses[2]) / 20), 1e-12)

# --autoencoder: the inputs are the targets (the file's class labels are dropped); Adam against PyTorch's with
# BCEWithLogits(sum) / N on (m(x), x), natgrad's bernoulli scaling.
torch.manual_seed(1)
ae = nn.Sequential(nn.Linear(5, 3), nn.Sigmoid(), nn.Linear(3, 5))
xa = torch.rand(N, 5)
da, _, ae_common = export_case(ae, [5], "bernoulli", xa, torch.randint(0, 3, (N,)))
out = os.path.join(da, "ae.safetensors")
oracle.run("train", *ae_common, "--autoencoder", "--optimizer", "adam", "--lr", "0.01", "--epochs", str(EPOCHS),
           "--batch", str(B), "--no-shuffle", "--save", out)
saved = load_safetensors(out)
ours = flat([saved[n] for n, _ in ae.named_parameters()])
m = copy.deepcopy(ae)
opt = torch.optim.Adam(m.parameters(), lr=0.01)
for _ in range(EPOCHS):
    for k in range(0, N, B):
        xb = xa[k:k + B]
        opt.zero_grad()
        (F.binary_cross_entropy_with_logits(m(xb), xb, reduction="sum") / xb.shape[0]).backward()
        opt.step()
oracle.check("--autoencoder adam against BCEWithLogits on (m(x), x)", rel(ours, flat([p.detach() for p in m.parameters()])), 1e-10)
oracle.expect_error("--autoencoder on a categorical model", ["train", *common, "--autoencoder"], "--autoencoder needs")


# Batch norm trains in evaluation mode: a residual graph with BatchNorm1d (running statistics and affine
# parameters away from their defaults) trained by Adam, against torch.optim.Adam on the same module in .eval()
# mode; natgrad says so on stderr, and --save's running statistics are the exported ones bit for bit (--save
# writes the buffers beside the parameters: a state_dict).
class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.fc1(x)))
        return self.head(h + torch.tanh(self.fc2(h)))


torch.manual_seed(4)
bn_model = BatchNormNet()
with torch.no_grad():
    bn_model.bn.running_mean.uniform_(-0.5, 0.5)
    bn_model.bn.running_var.uniform_(0.5, 2.0)
    bn_model.bn.num_batches_tracked.fill_(100)
    bn_model.bn.weight.uniform_(0.5, 1.5)
    bn_model.bn.bias.uniform_(-0.3, 0.3)
bn_model.eval()
db, _, bn_common = export_case(bn_model, [5], "categorical", x, y)
out = os.path.join(db, "bn.safetensors")
r = oracle.run("train", *[a for a in bn_common if a != "--quiet"], "--optimizer", "adam", "--lr", "0.01",
               "--epochs", str(EPOCHS), "--batch", str(B), "--no-shuffle", "--save", out)
note = "note: batch norm trains in evaluation mode: its running statistics stay fixed"
if note not in r.stderr:
    oracle.fail(f"batch norm: the note {note!r} is not on stderr: {r.stderr!r}")
saved, start = load_safetensors(out), load_safetensors(os.path.join(db, "weights.safetensors"))
for name in ("bn.running_mean", "bn.running_var"):
    a, b = saved.get(name), start[name]
    same = a is not None and a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()
    if not (same and torch.equal(b, bn_model.get_buffer(name))):
        oracle.fail(f"batch norm: --save's {name} {a} is not the exported {b}")
try:  # a state_dict PyTorch loads as it is (it fills in num_batches_tracked)
    BatchNormNet().load_state_dict(saved)
except RuntimeError as e:
    oracle.fail(f"batch norm: --save's file is not a state_dict load_state_dict takes: {e}")
m = copy.deepcopy(bn_model)
opt = torch.optim.Adam(m.parameters(), lr=0.01)
for _ in range(EPOCHS):
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(m(xb), yb).backward()
        opt.step()
ours = flat([saved[n] for n, _ in bn_model.named_parameters()])
oracle.check("batch norm in eval mode: adam vs PyTorch's .eval() module",
             rel(ours, flat([p.detach() for p in m.parameters()])), 1e-10)



# Text (--context T): windows of T + 1 bytes, non-overlapping (the bytes past the last whole window unread),
# inputs the first T bytes and targets the last T; --holdout's default keeps the last ⌊N/10⌋ windows (at least
# one) for evaluation. Adam on the others in file order against torch.optim.Adam on the mean cross-entropy over
# the batch's positions; the report's final test loss and accuracy (argmax at every position) against PyTorch's.
class CausalLM(nn.Module):
    """A byte-level transformer: embedding, learned positions, one causal nn.TransformerEncoderLayer, a head."""

    def __init__(self, T, D):
        super().__init__()
        self.tok = nn.Embedding(256, D)
        self.pos = nn.Parameter(torch.randn(T, D) * 0.5)
        self.layer = nn.TransformerEncoderLayer(D, 2, 12, dropout=0.0, batch_first=True)
        self.register_buffer("causal", torch.triu(torch.full((T, T), float("-inf")), 1))
        self.head = nn.Linear(D, 256)

    def forward(self, idx):
        return self.head(self.layer(self.tok(idx) + self.pos, src_mask=self.causal))


TEXT = (b"It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        b"foolishness, it was the epoch of belief.\n") * 2
for tag, T, lm in [("embedding", 5, lambda: nn.Sequential(nn.Embedding(256, 6), nn.Tanh(), nn.Linear(6, 256))),
                   ("transformer", 7, lambda: CausalLM(7, 8))]:
    torch.manual_seed(2)
    model = lm().eval()
    dt = os.path.join(d, "text_" + tag)
    export_model(model, [T], "categorical", dt)
    corpus = os.path.join(dt, "corpus.txt")
    with open(corpus, "wb") as f:
        f.write(TEXT)
    windows = torch.tensor(list(TEXT[:len(TEXT) // (T + 1) * (T + 1)]), dtype=torch.long).reshape(-1, T + 1)
    held = max(1, len(windows) // 10)
    xt, yt = windows[:-held, :T], windows[:-held, 1:]
    xh, yh = windows[-held:, :T], windows[-held:, 1:]
    out, rep = os.path.join(dt, "trained.safetensors"), os.path.join(dt, "report.json")
    oracle.run("train", "--model", os.path.join(dt, "model.json"), "--weights", os.path.join(dt, "weights.safetensors"),
               "--data", corpus, "--context", str(T), "--optimizer", "adam", "--lr", "0.01", "--epochs", "2",
               "--batch", "4", "--no-shuffle", "--dtype", "float64", "--quiet", "--save", out, "--report", rep)
    saved = load_safetensors(out)
    ours = flat([saved[n] for n, _ in model.named_parameters()])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        for k in range(0, len(xt), 4):
            opt.zero_grad()
            F.cross_entropy(model(xt[k:k + 4]).reshape(-1, 256), yt[k:k + 4].reshape(-1)).backward()
            opt.step()
    oracle.check(f"text, {tag} (T {T}): adam, 2 epochs of {len(xt)} windows",
                 rel(ours, flat([p.detach() for p in model.parameters()])), 1e-10)
    report = json.load(open(rep))
    with torch.no_grad():
        z = model(xh)
        loss = F.cross_entropy(z.reshape(-1, 256), yh.reshape(-1)).item()
        accuracy = (z.argmax(-1) == yh).double().mean().item()
    if not (report["samples"] == len(xt) and report["test_samples"] == held and report["test_accuracy"] == accuracy):
        oracle.fail(f"text, {tag}: windows {report['samples']}/{report['test_samples']} (want {len(xt)}/{held}), "
                    f"test accuracy {report['test_accuracy']} (want {accuracy})")
    print(f"text, {tag}: held-out accuracy {accuracy:.4f} over {held} windows of {T} positions")
    oracle.check(f"text, {tag}: the held-out tail's loss vs F.cross_entropy", abs(report["test_loss"] - loss) / loss, 1e-10)

for label, args, text in [
        ("momentum for adam", ["--optimizer", "adam", "--momentum", "0.9"], "--momentum"),
        ("an unknown line search", ["--line-search", "wolfe"], "--line-search must be"),
        ("--cg-backtrack yes", ["--cg-backtrack", "yes"], "--cg-backtrack must be"),
        ("an unknown optimizer", ["--optimizer", "lbfgs"], "--optimizer must be"),
        ("damping 0 for natgrad", ["--optimizer", "natgrad", "--damping", "0"], "--damping must be > 0"),
        ("zero epochs", ["--epochs", "0"], "--epochs must be >= 1")]:
    oracle.expect_error(label, ["train", *common, *args], text)
oracle.finish()
