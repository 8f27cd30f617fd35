#!/usr/bin/env python3
"""The PyTorch code people write, exported with tools/export_torch.py and checked against PyTorch autograd in
float64 (loss, gradient, exact and empirical F·v, the damped direction's residual: <= 1e-10 relative):
  - LeNet written with F.relu, F.max_pool2d, torch.tanh, F.avg_pool2d, x.view(x.size(0), -1) and a final
    F.log_softmax (dropped: the categorical likelihood applies it);
  - a CNN with F.leaky_relu, F.silu, F.softplus, x.reshape(-1, 64) (a leading -1 is the batch),
    x.flatten(1), torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), x.mean((2, 3)), mean(keepdim) then
    squeeze(3).squeeze(2), x.view(x.shape[0], x.size(1) * x.size(2) * x.size(3)), unsqueeze(1) then
    nn.Flatten, torch.cat; for the categorical and gaussian likelihoods;
  - an MLP ending in nn.LogSoftmax(dim=1), and one ending in torch.sigmoid with the bernoulli likelihood
    (whose BCELoss equals natgrad's loss);
  - depthwise (multiplier 1 and 2, stride 2) and grouped nn.Conv2d, and nn.Conv1d on [C, L] (padding,
    stride 2, padding="same", depthwise and grouped);
  - byte-level language models on nn.TransformerEncoder (2 layers) or two nn.TransformerEncoderLayers:
    norm_first True and False, relu and gelu, dropout in eval mode, a causal mask from a buffer or from
    nn.Transformer.generate_square_subsequent_mask (of x.size(1) or of a number), a final LayerNorm, and
    is_causal=True where PyTorch has it (>= 2.0);
  - a gated MLP (a * torch.sigmoid(b), x - 1.0, * 0.5, + 2 / 4, 2.0 - h / 4 - a, -h * h.size(-1) ** -0.5,
    F.mish); x.unsqueeze(1) on [N, 6, 6] inputs, view(-1, 2, 16) then reshape(h.size(0), -1);
    squeeze-and-excitation (h * h.mean((2, 3), keepdim=True).sigmoid(), broadcast), nn.Upsample and
    F.interpolate, permute(0, 2, 3, 1) into positions, F.elu, sum(dim=(1, 2)), mean(1), transpose(2, 3),
    reshape(x.size(0), 20, 4), scalar arithmetic; for the categorical and gaussian likelihoods;
  - `natgrad info` shows each node with its PyTorch origin (module and source line), attention's three nodes
    with their module's.
Refusals, each a sentence: a batch dimension in input_shape, an unknown likelihood, a final softmax, a
src_key_padding_mask, a mask that is not causal, a view that mixes the batch, an unsupported module and an
unsupported function (naming the construct, the user's source line, the equivalent and the table), and an
InstanceNorm with running statistics in training mode or on a batch without a length.
A depthwise-separable CNN (depthwise and grouped Conv2d, GroupNorm, nn.ELU, nn.Upsample, F.interpolate,
mean((2, 3))) and a Conv1d sequence classifier (transpose, Conv1d, F.elu, permute, mean(1), sum(dim=1)) are
also run as written spec by a float64 reference of each node type as docs/formats.md defines it, against
model(x): the translation's meaning, checked apart from natgrad's arithmetic.
Exit code 77 (ctest SKIP) when PyTorch is not installed, 1 with NATGRAD_REQUIRE_TORCH=1 (torch_oracle.py)."""
import inspect
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from torch_oracle import Oracle, export_case  # noqa: E402  (first: imports torch or ends the script)
from torch_reference import flat, fvp, nll, rel  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from export_torch import export_model, graph_spec, load_safetensors, to_vector  # noqa: E402

oracle = Oracle()
check, run, failures = oracle.check, oracle.run, oracle.failures
torch.set_default_dtype(torch.float64)
HERE = os.path.basename(__file__)


def line_of(cls, text):
    """The line of this file where cls's forward has `text`: the source line an error or origin must name."""
    lines, start = inspect.getsourcelines(cls.forward)
    return next(start + i for i, line in enumerate(lines) if text in line)


class LeNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 4, 2)
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


class CNN(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc_a = nn.Linear(64, classes)
        self.fc_b = nn.Linear(64, classes)
        self.flat = nn.Flatten()
        self.fc_c = nn.Linear(6 + 6 + 6 + 96, classes)

    def forward(self, x):
        h = F.max_pool2d(F.leaky_relu(self.conv1(x), 0.1), 2, 2)           # [4, 4, 4]
        a = self.fc_a(h.reshape(-1, 64)) + self.fc_b(h.flatten(1))         # a leading -1 is the batch
        h2 = F.silu(self.conv2(h))                                         # [6, 4, 4]
        b = torch.flatten(F.adaptive_avg_pool2d(h2, 1), 1)                 # global average pooling
        c = h2.mean((2, 3))
        g = F.softplus(h2).mean((2, 3), keepdim=True).squeeze(3).squeeze(2)
        n = h2.view(h2.shape[0], h2.size(1) * h2.size(2) * h2.size(3))     # [96]: sizes resolved at trace time
        n = self.flat(torch.sigmoid(n).unsqueeze(1))                       # [1, 96] and back: no node
        return a + self.fc_c(torch.cat([b, c, g, n], 1))


class LogSoftmaxMLP(nn.Sequential):
    def __init__(self, classes):
        super().__init__(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, classes), nn.LogSoftmax(dim=1))


class Logits(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.out = nn.Linear(8, classes)

    def forward(self, x):
        return self.out(F.gelu(self.fc(x.view(x.size(0), -1))))


class SigmoidMLP(nn.Module):
    """Trained with BCELoss on its probabilities."""

    def __init__(self, classes):
        super().__init__()
        self.logits = Logits(classes)

    def forward(self, x):
        return torch.sigmoid(self.logits(x))


T, V, D = 6, 256, 8


class GroupedCNN(nn.Module):
    """Depthwise (groups = channels, multiplier 1 and 2, stride 2) and grouped Conv2d."""

    def __init__(self, classes):
        super().__init__()
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 6, 1, groups=2)
        self.depthwise2 = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6, bias=False)
        self.grouped3 = nn.Conv2d(12, 6, (3, 2), padding=(1, 0), groups=3)
        self.fc = nn.Linear(6 * 3 * 2, classes)

    def forward(self, x):                                   # [4, 6, 6]
        h = F.relu(self.grouped(F.relu(self.depthwise(x))))
        h = self.grouped3(F.relu(self.depthwise2(h)))       # [12, 3, 3] then [6, 3, 2]
        return self.fc(h.view(h.size(0), -1))


class Conv1dNet(nn.Module):
    """nn.Conv1d on [C, L]: padding, stride 2, padding="same", grouped and depthwise."""

    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv1d(6, 6, 3, stride=2, groups=6)
        self.conv3 = nn.Conv1d(6, 4, 5, padding="same", groups=2, bias=False)
        self.fc = nn.Linear(4 * 4, classes)

    def forward(self, x):                                   # [3, 10]
        h = F.relu(self.conv2(F.relu(self.conv1(x))))       # [6, 4]
        return self.fc(torch.flatten(self.conv3(h), 1))


class EncoderLM(nn.Module):
    """A byte-level language model: embedding, learned positions, nn.TransformerEncoder (or two
    nn.TransformerEncoderLayers), a linear head; a prediction at every position."""

    def __init__(self, norm_first, activation, mask, stack):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(T, D) * 0.5)
        layer = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.1, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.stack, self.mask_kind = stack, mask
        if stack == "encoder":
            self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D) if norm_first else None)
        else:
            self.layer0 = layer
            self.layer1 = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.1, activation=activation, batch_first=True,
                                                     norm_first=norm_first)
        if mask == "buffer":
            self.register_buffer("causal", torch.triu(torch.full((T, T), float("-inf")), 1))
        self.head = nn.Linear(D, V)

    def forward(self, idx):
        h = self.tok(idx) + self.pos
        if self.mask_kind == "buffer":
            mask = self.causal
        elif self.mask_kind in ("size", "is_causal"):
            mask = nn.Transformer.generate_square_subsequent_mask(idx.size(1))
        else:
            mask = nn.Transformer.generate_square_subsequent_mask(T)
        if self.stack == "encoder" and self.mask_kind == "is_causal":
            h = self.encoder(h, mask, is_causal=True)
        elif self.stack == "encoder":
            h = self.encoder(h, mask)
        else:
            h = self.layer1(self.layer0(h, src_mask=mask), src_mask=mask)
        return self.head(h)


class NormCNN(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.gn = nn.GroupNorm(3, 6)
        self.conv2 = nn.Conv2d(6, 4, 3)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.gn1 = nn.GroupNorm(1, 4, affine=False)
        self.plain = nn.InstanceNorm2d(4)
        self.tracked = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)  # eval: running statistics
        self.fc = nn.Linear(4 * 6 * 6, classes)

    def forward(self, x):
        h = torch.relu(self.gn(self.conv1(x)))
        h = self.inorm(self.conv2(h))
        h = torch.tanh(self.gn1(h)) + self.plain(h)
        return self.fc(self.tracked(h).flatten(1))


class NormSequence(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.embed = nn.Linear(5, 6)                        # [N, 3, 5] -> [N, 3, 6]: C = 3, L = 6
        self.inorm = nn.InstanceNorm1d(3, affine=True)
        self.gn = nn.GroupNorm(1, 3)
        self.hidden = nn.Linear(18, 8)
        self.gn_flat = nn.GroupNorm(4, 8)                   # on [N, C]: groups of 2 features
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h = self.gn(torch.relu(self.inorm(self.embed(x))))
        return self.fc(torch.tanh(self.gn_flat(self.hidden(h.flatten(1)))))


def randomize(model):
    """Non-trivial normalization parameters and biases, as a trained network has."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)) and \
                    m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.uniform_(-0.3, 0.3)
                m.out_proj.bias.uniform_(-0.3, 0.3)


def compare(tag, model, shape, lik, x, y, logits=None, user_loss=None):
    """natgrad against autograd: the loss (also the one the model was trained with, user_loss), the gradient,
    the exact and empirical F·v and the residual of the damped direction in PyTorch. `logits` is the model
    without a final sigmoid that the likelihood applies (a module with the same parameters)."""
    lam = 0.05
    logits = logits or model
    d, v, common = export_case(model, shape, lik, x, y)
    params = list(model.parameters())
    for kind in ("exact", "empirical"):
        out = os.path.join(d, f"fv_{kind}.safetensors")
        run("fvp", *common, "--fisher", kind, "--vector", os.path.join(d, "v.safetensors"), "--output", out)
        check(f"{tag}: fvp {kind} vs PyTorch", rel(to_vector(model, load_safetensors(out)),
                                                  fvp(logits, x, y, lik, kind, v)), 1e-10)
    report = os.path.join(d, "report.json")
    run("solve", *common, "--damping", str(lam), "--cg-tol", "1e-13", "--cg-max-iters", "5000", "--report", report,
        "--output", os.path.join(d, "dir.safetensors"), "--save-gradient", os.path.join(d, "g.safetensors"))
    loss = nll(lik, logits(x), y)
    ours = json.load(open(report))["loss"]
    check(f"{tag}: loss vs PyTorch", abs(ours - loss.item()) / abs(loss.item()), 1e-10)
    if user_loss is not None:
        check(f"{tag}: loss vs the trained loss", abs(ours - user_loss(model(x), y).item()) / abs(ours), 1e-10)
    g_ref = flat(torch.autograd.grad(loss, params))
    check(f"{tag}: gradient vs PyTorch", rel(to_vector(model, load_safetensors(os.path.join(d, "g.safetensors"))),
                                             g_ref), 1e-10)
    direction = load_safetensors(os.path.join(d, "dir.safetensors"))
    dvec = [direction[n].reshape(p.shape) for n, p in model.named_parameters()]
    residual = fvp(logits, x, y, lik, "exact", dvec) + lam * flat(dvec) - g_ref
    check(f"{tag}: residual of the direction in PyTorch", float(residual.norm() / g_ref.norm()), 1e-10)
    return d


N, C = 12, 4
torch.manual_seed(7)
images = torch.randn(N, 1, 12, 12)
labels = torch.randint(0, C, (N,))
lenet_dir = compare("LeNet, F.max_pool2d, view(x.size(0), -1), log_softmax", LeNet(C).eval(), [1, 12, 12],
                    "categorical", images, labels, user_loss=F.nll_loss)
small = torch.randn(N, 1, 8, 8)
for lik, y in (("categorical", labels), ("gaussian", torch.randn(N, C))):
    torch.manual_seed(8)
    compare(f"CNN, mean((2, 3)), flatten, reshape ({lik})", CNN(C).eval(), [1, 8, 8], lik, small, y)
flat_in = torch.randn(N, 4, 4)
torch.manual_seed(9)
compare("MLP ending in nn.LogSoftmax", LogSoftmaxMLP(C).eval(), [4, 4], "categorical", flat_in, labels,
        user_loss=F.nll_loss)
torch.manual_seed(13)
compare("grouped and depthwise Conv2d", GroupedCNN(C).eval(), [4, 6, 6], "categorical", torch.randn(N, 4, 6, 6),
        labels)
torch.manual_seed(14)
compare("Conv1d with padding, stride 2, same, groups", Conv1dNet(C).eval(), [3, 10], "categorical",
        torch.randn(N, 3, 10), labels)
torch.manual_seed(10)
sig = SigmoidMLP(C).eval()
compare("MLP ending in torch.sigmoid (bernoulli)", sig, [4, 4], "bernoulli", flat_in,
        torch.randint(0, 2, (N, C)).double(), logits=sig.logits,
        user_loss=lambda p, y: F.binary_cross_entropy(p, y, reduction="sum") / p.shape[0])

tokens = torch.randint(0, V, (8, T))
next_tokens = torch.randint(0, V, (8, T))
lm_dir = None
variants = [(True, "gelu", "buffer", "encoder"), (False, "relu", "size", "encoder"), (True, "relu", "number", "layers"),
            (False, "gelu", "buffer", "layers")]
if "is_causal" in inspect.signature(nn.TransformerEncoder.forward).parameters:  # PyTorch >= 2.0
    variants.append((False, "gelu", "is_causal", "encoder"))
else:
    print(f"is_causal=True: not in PyTorch {torch.__version__}'s nn.TransformerEncoder, not checked")
for norm_first, act, mask, stack in variants:
    torch.manual_seed(11)
    lm = EncoderLM(norm_first, act, mask, stack)
    randomize(lm)
    lm.eval()
    tag = f"{stack}, norm_first={norm_first}, {act}, mask {mask}"
    directory = compare(tag, lm, [T], "categorical", tokens, next_tokens)
    lm_dir = lm_dir or directory

torch.manual_seed(13)
norm_cnn = NormCNN(C)
randomize(norm_cnn)
with torch.no_grad():
    norm_cnn.tracked.running_mean.uniform_(-0.3, 0.3)
    norm_cnn.tracked.running_var.uniform_(0.5, 1.5)
compare("CNN with GroupNorm and InstanceNorm2d", norm_cnn.eval(), [1, 8, 8], "categorical", small, labels)
torch.manual_seed(14)
norm_seq = NormSequence(C)
randomize(norm_seq)
compare("sequence model with InstanceNorm1d and GroupNorm", norm_seq.eval(), [3, 5], "categorical",
        torch.randn(N, 3, 5), labels)

# natgrad info: each node with its PyTorch origin, attention's three nodes with their module's.
info = run("info", "--model", os.path.join(lenet_dir, "model.json")).stdout
for text in (f"F.max_pool2d at {HERE}:{line_of(LeNet, 'F.max_pool2d')}", f"conv2 (nn.Conv2d) at {HERE}:"
             f"{line_of(LeNet, 'self.conv2(x)')}", f"Tensor.view at {HERE}:{line_of(LeNet, 'x.view')}"):
    if text not in info:
        failures.append(f"natgrad info does not show {text!r}:\n{info}")
info = run("info", "--model", os.path.join(lm_dir, "model.json")).stdout
rows = {line.split()[0]: line for line in info.splitlines()[1:] if line.startswith("  ") and line.split()}
for layer in json.load(open(os.path.join(lm_dir, "model.json")))["layers"]:
    ids = [layer["id"]] + ([layer["id"] + "/in_proj", layer["id"] + "/attention"]
                           if layer["type"] == "multihead_attention" else [])
    for i in ids:
        if not rows.get(i, "").endswith(layer["origin"]):
            failures.append(f"natgrad info's row of {i} does not end with {layer['origin']!r}: {rows.get(i)}")
line = line_of(EncoderLM, "h = self.encoder(h, mask)")
if f"encoder.layers.1.self_attn (nn.MultiheadAttention) at {HERE}:{line}" not in info:
    failures.append(f"natgrad info does not name encoder.layers.1.self_attn and line {line}:\n{info}")
print("natgrad info shows the origins")


# Refusals, each a sentence that says what to do.
def refused(label, make, *texts):
    try:
        make()
        failures.append(f"{label}: exported")
    except ValueError as e:
        print(f"{label}: {e}")
        missing = [t for t in texts if t not in str(e)]
        if missing or "\n" in str(e):
            failures.append(f"{label}: {str(e)!r} lacks {missing}")


def export(model, shape, lik="categorical"):
    return lambda: export_model(model, shape, lik, tempfile.mkdtemp())


refused("batch dimension in input_shape", export(LeNet(C).eval(), [1, 1, 12, 12]),
        "includes the batch dimension", "[1, 12, 12]")
refused("unknown likelihood", export(LeNet(C).eval(), [1, 12, 12], "poisson"), "unknown likelihood 'poisson'",
        "\"categorical\", \"gaussian\", \"bernoulli\"")


class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, C)

    def forward(self, x):
        return F.softmax(self.fc(x.flatten(1)), dim=-1)


refused("final softmax", export(SoftmaxNet().eval(), [4, 4]), "F.softmax",
        f"{HERE}:{line_of(SoftmaxNet, 'F.softmax')}", "drop the softmax", "docs/formats.md")


class PaddedEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, 2, 16, batch_first=True), 1)

    def forward(self, idx):
        return self.encoder(self.tok(idx), src_key_padding_mask=idx == 0)


refused("src_key_padding_mask", export(PaddedEncoder().eval(), [T]), "src_key_padding_mask is not supported",
        f"{HERE}:{line_of(PaddedEncoder, 'src_key_padding_mask=')}")


class BidirectionalMask(EncoderLM):
    def __init__(self):
        super().__init__(True, "relu", "buffer", "encoder")
        self.causal.fill_(0).diagonal(1).fill_(float("-inf"))  # masks only the next position


refused("a mask that is not causal", export(BidirectionalMask().eval(), [T]), "'causal' is not a causal mask")


class MergesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, C)

    def forward(self, x):
        return self.fc(x.view(-1, 4))                      # [4 N, 4]: the rows of the images, not the images


refused("a view that mixes the batch", export(MergesBatch().eval(), [4, 4]), "Tensor.view",
        f"{HERE}:{line_of(MergesBatch, 'x.view(-1, 4)')}", "use x.flatten(1) or x.view(x.size(0), -1)")


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, C)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(self.fc(x.flatten(1)))


refused("an unsupported module", export(Unsupported().eval(), [4, 4]), "nn.Hardswish 'act'",
        f"{HERE}:{line_of(Unsupported, 'self.act(')} `return self.act(self.fc(x.flatten(1)))`",
        "the table of docs/formats.md")


class FunctionalLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(C, 16))

    def forward(self, x):
        return F.linear(x.flatten(1), self.weight)


refused("an unsupported function with an equivalent", export(FunctionalLinear().eval(), [4, 4]), "F.linear",
        f"{HERE}:{line_of(FunctionalLinear, 'F.linear')}", "use nn.Linear", "docs/formats.md")


refused("InstanceNorm2d with running statistics in training mode",
        export(nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2, track_running_stats=True), nn.Flatten(),
                             nn.Linear(18, C)), [1, 5, 5]),
        "track_running_stats=True", "call model.eval() before exporting", "docs/formats.md")
refused("InstanceNorm1d on a batch without a length",
        export(nn.Sequential(nn.Linear(4, 3), nn.InstanceNorm1d(3)).eval(), [4]),
        "nn.InstanceNorm1d", "a batch [N, C, L], but a sample here has shape [3]", "docs/formats.md")


# The written spec, run by a float64 reference of each node type as docs/formats.md defines it, computes the
# model's output.
def reference(spec, tensors, x):
    values = {"input": x}

    def p(layer, key):
        return tensors.get(f"{layer['name']}.{key}")

    for layer in spec["layers"]:
        t, a = layer["type"], [values[i] for i in layer["inputs"]]
        if t == "linear":
            y = F.linear(a[0], p(layer, "weight"), p(layer, "bias"))
        elif t in ("conv1d", "conv2d"):
            y = (F.conv1d if t == "conv1d" else F.conv2d)(a[0], p(layer, "weight"), p(layer, "bias"), layer["stride"],
                                                         layer["padding"], 1, layer.get("groups", 1))
        elif t == "group_norm":
            y = F.group_norm(a[0], layer["num_groups"], p(layer, "weight"), p(layer, "bias"), layer["eps"])
        elif t == "flatten":
            y = a[0].flatten(1)
        elif t == "reshape":
            y = a[0].reshape(a[0].shape[0], *layer["shape"])
        elif t == "permute":
            y = a[0].permute(layer["dims"])
        elif t == "scalar_affine":
            y = layer["scale"] * a[0] + layer["shift"]
        elif t == "mul":
            y = a[0] * a[1]
        elif t == "add":
            y = a[0] + (a[1] if len(a) > 1 else tensors[layer["parameter"]])
        elif t in ("mean", "sum"):
            y = getattr(torch, t)(a[0], layer["dim"], keepdim=layer["keepdim"])
        elif t == "global_avgpool":
            y = a[0].mean((2, 3), keepdim=layer["keepdim"])
        elif t == "upsample":
            y = F.interpolate(a[0], scale_factor=layer["scale_factor"], mode="nearest")
        elif t == "elu":
            y = F.elu(a[0], layer["alpha"])
        elif t in ("relu", "tanh", "sigmoid", "mish", "gelu", "silu"):
            y = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}.get(t, getattr(F, t))(a[0])
        else:
            raise ValueError(f"no reference for {t}")
        values[layer["id"]] = y
    return values[spec["output"]]


class GatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(6, 8)
        self.gate = nn.Linear(6, 8)
        self.out = nn.Linear(8, C)

    def forward(self, x):
        a = self.up(x)
        h = a * torch.sigmoid(self.gate(x))           # a gate: tensor * tensor
        h = (h - 1.0) * 0.5 + 2 / 4
        h = 2.0 - h / 4 - a
        h = -h * h.size(-1) ** -0.5
        return self.out(F.mish(h))


class SeparableCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 6, 1, groups=2)
        self.norm = nn.GroupNorm(2, 6)
        self.act = nn.ELU(0.7)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(6, C)

    def forward(self, x):
        h = self.act(self.norm(self.grouped(self.depthwise(x))))
        h = F.interpolate(self.up(h), scale_factor=2)
        return self.fc(h.mean((2, 3)))


class Conv1dClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(5, 6)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, C)
        self.per_step = nn.Linear(6, C)

    def forward(self, x):                                 # x: [N, L, 5]
        h = self.emb(x).transpose(1, 2)                   # [N, 6, L]: channels first
        h = F.elu(self.conv(h)).permute(0, 2, 1)          # back to [N, L, 6]
        return self.fc(h.mean(1)) + self.per_step(h).sum(dim=1)


class Unsqueezed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, C)

    def forward(self, x):                                  # [N, 6, 6] images without a channel dimension
        h = self.conv(x.unsqueeze(1))
        return self.fc(torch.relu(h).view(-1, 2, 16).reshape(h.size(0), -1))


class Excitation(nn.Module):
    """Squeeze-and-excitation, upsampling, channels-last positions, ELU, a sum over positions, transpose."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.per_position = nn.Linear(3, 5)
        self.fc = nn.Linear(5, C)
        self.seq = nn.Linear(4, C)

    def forward(self, x):                                 # [N, 2, 4, 4]
        h = torch.relu(self.conv(x))
        h = h * h.mean((2, 3), keepdim=True).sigmoid()    # [3, 4, 4] * [3, 1, 1]
        h = F.interpolate(self.up(h), scale_factor=2)     # [3, 16, 16]
        h = F.avg_pool2d(h, 4)                            # [3, 4, 4]
        p = F.elu(self.per_position(h.permute(0, 2, 3, 1)), 0.5)   # [4, 4, 5]
        s = p.sum(dim=(1, 2)) / 16 + p.mean(1).mean(1)    # [5]
        t = self.seq(p.transpose(2, 3).reshape(x.size(0), 20, 4)).mean(1)   # [C]
        return self.fc(s) * 0.5 + t


torch.manual_seed(13)
compare("gated MLP with scalar arithmetic and Mish", GatedMLP().eval(), [6], "categorical", torch.randn(N, 6), labels)
torch.manual_seed(14)
compare("unsqueeze of the input, view(-1, 2, 16), reshape", Unsqueezed().eval(), [6, 6], "categorical",
        torch.randn(N, 6, 6), labels)
torch.manual_seed(15)
for lik, y in (("categorical", labels), ("gaussian", torch.randn(N, C))):
    compare(f"squeeze-and-excitation, upsample, permute, transpose, mean, sum, ELU ({lik})", Excitation().eval(),
            [2, 4, 4], lik, torch.randn(N, 2, 4, 4), y)


# The two models whose operations came last (grouped convolutions, Conv1d, GroupNorm): against autograd, and
# the written spec against a float64 reference of each node type as docs/formats.md defines it.
for label, cls, shape in [("depthwise-separable CNN with GroupNorm, ELU, upsampling", SeparableCNN, [4, 5, 5]),
                          ("Conv1d classifier with transpose, permute, a mean over time and a sum", Conv1dClassifier,
                           [7, 5])]:
    torch.manual_seed(12)
    model = cls().eval()
    randomize(model)
    spec, buffers, _ = graph_spec(model, shape, "categorical")
    tensors = dict(model.named_parameters())
    tensors.update(buffers)
    x = torch.randn(N, *shape)
    with torch.no_grad():
        check(f"{label}: the written spec's output vs model(x)", rel(reference(spec, tensors, x), model(x)), 1e-12)
    compare(label, model, shape, "categorical", x, labels)

oracle.finish()
