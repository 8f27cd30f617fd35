#!/usr/bin/env python3
"""Graph models written as ordinary nn.Module classes, exported with tools/export_torch.py (torch.fx), against
PyTorch autograd as an independent oracle, in float64:
  - a ResNet (residual blocks with torch.relu(x + ...), batch norm in eval mode with non-trivial running
    statistics, a strided block with a 1x1 conv + batch norm shortcut, padding="same", F.silu, x.mean((2, 3)),
    nested nn.Sequential and nn.Sequential(OrderedDict(...)) modules);
  - a ResNet laid out as torchvision's (a 7x7 stride-2 stem, MaxPool2d(3, 2, 1), BasicBlocks with a shared
    inplace ReLU and `out += identity`, AdaptiveAvgPool2d((1, 1)), torch.flatten);
  - a residual MLP (layer norm with non-trivial affine parameters, F.gelu, an nn.Parameter added in forward,
    torch.cat, dropout in eval mode, nn.Identity);
  - a token model (nn.Embedding on I64 inputs, a learned [T, d] position table, layer norm, a linear layer and
    GELU (tanh form) applied at every position, flatten);
  - a sequence model with a prediction at every position (output [N, T, C], I64 targets [N, T], the loss
    cross_entropy(logits.view(-1, C), y.view(-1)): the Fisher is a mean over the N·T positions).
For each: the gradient, the exact and empirical F·v, the damped natural-gradient direction (its residual in
PyTorch) and the top eigenvalues (against the dense F built from PyTorch's Jacobian) agree to 1e-10 relative;
the direction loads back with load_state_dict(d, strict=False) and to_vector; and the exporter refuses
training-mode batch norm and an unsupported function with a message naming the node, its target and module.
Exit code 77 (ctest SKIP) when PyTorch is not installed, 1 with NATGRAD_REQUIRE_TORCH=1 (torch_oracle.py)."""
import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_oracle import Oracle, export_model, flat, rel, to_vector  # noqa: E402  (first: imports torch or exits)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

oracle = Oracle()
failures = oracle.failures
torch.set_default_dtype(torch.float64)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.stem = nn.Sequential(collections.OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding="same"), bn=nn.BatchNorm2d(4)))
        self.blocks = nn.Sequential(Block(4, 4, 1), Block(4, 6, 2))
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(self.blocks(F.silu(self.stem(x))).mean((2, 3)))


class TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock, as written there: shared inplace ReLU, `out += identity`, a downsample."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchvisionStyleResNet(nn.Module):
    """torchvision's ResNet layout in miniature: 7x7 stride-2 stem, MaxPool2d(3, 2, 1), AdaptiveAvgPool2d((1, 1)),
    torch.flatten(x, 1)."""

    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(TorchvisionBlock(4, 4, 1))
        self.layer2 = nn.Sequential(TorchvisionBlock(4, 6, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResidualMLP(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 8)
        self.shift = nn.Parameter(torch.randn(8))
        self.drop = nn.Dropout(0.3)
        self.skip = nn.Identity()
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        h = self.fc1(x)
        r = self.fc2(F.gelu(self.norm(h))) + self.skip(h)
        return self.out(self.drop(torch.cat([torch.tanh(r + self.shift), h], 1)))


class TokenModel(nn.Module):
    def __init__(self, classes, vocab=7, T=5, d=3):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.5)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4), nn.GELU(approximate="tanh"))  # per position: [T, d] -> [T, 4]
        self.head = nn.Linear(T * 4, classes)

    def forward(self, idx):
        return self.head(torch.flatten(self.mlp(self.norm(self.tok(idx) + self.pos)), 1))


class SequenceModel(nn.Module):
    """A prediction at every position: output [N, T, C], loss cross_entropy(logits.view(-1, C), y.view(-1))."""

    def __init__(self, classes, vocab=7, T=5, d=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.5)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, idx):
        h = self.norm(self.tok(idx) + self.pos)
        return self.head(h + F.gelu(self.fc(h), approximate="tanh"))


def randomize_norms(model):
    """Non-trivial running statistics and affine parameters, as a trained network has."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(100)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


cases = [("resnet", ResNet, [1, 8, 8], ("categorical", "gaussian", "bernoulli")),
         ("torchvision_style_resnet", TorchvisionStyleResNet, [1, 16, 16], ("categorical",)),
         ("residual_mlp", ResidualMLP, [6], ("categorical",)),
         ("token_model", TokenModel, [5], ("categorical",)),
         ("sequence_model", SequenceModel, [5], ("categorical",))]
N, C = 24, 4
for name, cls, shape, likelihoods in cases:
    for lik in likelihoods:
        torch.manual_seed(3)
        model = cls(C)
        randomize_norms(model)
        model.eval()
        x = torch.randint(0, 7, (N, *shape)) if name in ("token_model", "sequence_model") else torch.randn(N, *shape)
        y = {"categorical": torch.randint(0, C, (N, 5) if name == "sequence_model" else (N,)), "gaussian": torch.randn(N, C),
             "bernoulli": torch.randint(0, 2, (N, C)).double()}[lik]
        tag = f"{name} {lik}"
        _, direction, _ = oracle.check_case(tag, model, shape, lik, x, y, top=3 if lik == "categorical" else 0)
        if lik == "categorical":
            # The direction holds the parameters only: it loads with strict=False, and to_vector flattens it.
            copy = cls(C)
            missing, unexpected = copy.load_state_dict(direction, strict=False)
            buffers = {n for n, _ in model.named_buffers()}
            if unexpected or not set(missing) <= buffers:
                failures.append(f"{tag}: load_state_dict(strict=False) missing {missing}, unexpected {unexpected}")
            oracle.check(f"{tag}: direction after load_state_dict vs to_vector",
                         rel(flat(p.detach() for p in copy.parameters()), to_vector(model, direction)), 1e-15)

# The exporter refuses what has no per-sample Fisher, and names what it cannot translate.
model = ResNet(C)
try:
    export_model(model, [1, 8, 8], "categorical", tempfile.mkdtemp())  # still in training mode
    failures.append("training-mode batch norm was exported")
except ValueError as e:
    print("training mode:", e)
    if "model.eval()" not in str(e) or "stem_bn" not in str(e):
        failures.append(f"training-mode message: {e}")


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sin(self.inner(x)))


try:
    export_model(Unsupported().eval(), [4], "categorical", tempfile.mkdtemp())
    failures.append("torch.sin was exported")
except ValueError as e:
    print("unsupported:", e)
    if "node sin" not in str(e) or "sin" not in str(e) or "top-level forward" not in str(e):
        failures.append(f"unsupported-node message: {e}")

oracle.finish()
