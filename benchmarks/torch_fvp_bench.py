#!/usr/bin/env python3
"""The PyTorch peer of natgrad-bench: the exact categorical Fisher-vector product F v = 1/B Σ J_nᵀ H_n J_n v of
the benchmark MLP (784-1024-1024-10, tanh, B = 1000), CNN (--model cnn, B = 256), ResNet (--model resnet,
B = 128; batch norm in evaluation mode) or GPT (--model gpt, B = 16 sequences of 128 tokens, a categorical
per position, F = 1/(B·T) Σ J_nᵀ H_n J_n), timed three ways; the fastest counts as the peer's time.

  fvp_forward_ad_s       J v by forward-mode AD (torch.autograd.forward_ad) in a fresh forward pass that also
                         records the graph, then H, then Jᵀ w by one backward pass;
  fvp_retained_s         the forward graph is built once and kept; J v by the double-vjp trick on it
                         (J v = ∂/∂w (Jᵀ w)·v), Jᵀ w by one more backward over it;
  fvp_double_backward_s  J v by double backward through a fresh forward pass, then Jᵀ w.

Also prints forward_s and gradient_s (forward + backward of the mean cross-entropy). Medians of --reps runs.
Run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset so OpenBLAS picks this processor's kernels.
"""
import argparse
import statistics
import time

import torch
import torch.autograd.forward_ad as fwAD

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", choices=["mlp", "cnn", "resnet", "gpt"], default="mlp")
ap.add_argument("--cnn", action="store_true", help="the same as --model cnn")
ap.add_argument("--batch", type=int, default=None,
                help="samples (default 1000 for the MLP, 256 for the CNN, 128 for the ResNet, 16 for the GPT)")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=7)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

if args.cnn:
    args.model = "cnn"


class Block(torch.nn.Module):
    """natgrad-bench's basic block: conv, batch norm, relu, conv, batch norm, + shortcut, relu."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(Block(32, 32, 1), Block(32, 32, 1), Block(32, 64, 2), Block(64, 64, 1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class GptBlock(torch.nn.Module):
    """natgrad-bench's pre-norm block: x + attn(ln1(x)) with a causal mask, then x + proj(gelu(fc(ln2(x))))."""

    def __init__(self, d, heads, T):
        super().__init__()
        nn = torch.nn
        self.ln1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2, self.fc, self.proj = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class Gpt(torch.nn.Module):
    def __init__(self, V=4096, d=256, heads=4, T=128, L=4):
        super().__init__()
        self.tok, self.pos = torch.nn.Embedding(V, d), torch.nn.Parameter(0.02 * torch.randn(T, d))
        self.blocks = torch.nn.Sequential(*[GptBlock(d, heads, T) for _ in range(L)])
        self.ln, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, V)

    def forward(self, idx):
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos)))


classes, positions = 10, 1
if args.model == "cnn":
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(3136, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    B = args.batch or 256
    x = torch.rand(B, 1, 28, 28)
elif args.model == "resnet":
    net = ResNet().eval()  # batch norm with running statistics: a per-sample Fisher exists
    B = args.batch or 128
    x = torch.rand(B, 1, 28, 28)
elif args.model == "gpt":
    net = Gpt().eval()
    B = args.batch or 16
    classes, positions = 4096, 128
    x = torch.randint(0, classes, (B, positions))
else:
    net = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 1024), torch.nn.Tanh(),
                              torch.nn.Linear(1024, 10))
    B = args.batch or 1000
    x = torch.rand(B, 784)
y = torch.randint(0, classes, (B, positions) if positions > 1 else (B,))
params = list(net.parameters())
names = [n for n, _ in net.named_parameters()]
v = [torch.randn_like(p) for p in params]


def functional(ps, inp):
    return torch.func.functional_call(net, dict(zip(names, ps)), (inp,)) if hasattr(torch, "func") else \
        torch.nn.utils.stateless.functional_call(net, dict(zip(names, ps)), (inp,))


def output_fisher(z, u):  # H u / (B·T) for the categorical likelihood: (diag(p) − p pᵀ) u / (B·T), per position
    p = torch.softmax(z.detach(), -1)
    return (p * u - p * (p * u).sum(-1, keepdim=True)) / (B * positions)


def fvp_forward_ad():
    with fwAD.dual_level():
        dual = [fwAD.make_dual(p.detach().requires_grad_(), t) for p, t in zip(params, v)]
        out = functional(dual, x)
        z, u = fwAD.unpack_dual(out)
    return torch.autograd.grad(z, [fwAD.unpack_dual(d).primal for d in dual], output_fisher(z, u))


retained = {}


def fvp_retained():
    if not retained:
        ps = [p.detach().requires_grad_() for p in params]
        z = functional(ps, x)
        retained.update(ps=ps, z=z, w=torch.zeros_like(z, requires_grad=True))
    ps, z, w = retained["ps"], retained["z"], retained["w"]
    g = torch.autograd.grad(z, ps, w, create_graph=True, retain_graph=True)
    u = torch.autograd.grad(g, w, v, retain_graph=True)[0]
    return torch.autograd.grad(z, ps, output_fisher(z, u), retain_graph=True)


def fvp_double_backward():
    ps = [p.detach().requires_grad_() for p in params]
    z = functional(ps, x)
    w = torch.zeros_like(z, requires_grad=True)
    g = torch.autograd.grad(z, ps, w, create_graph=True)
    u = torch.autograd.grad(g, w, v, retain_graph=True)[0]
    return torch.autograd.grad(z, ps, output_fisher(z, u))


def forward():
    with torch.no_grad():
        return net(x)


def gradient():
    net.zero_grad()
    z = net(x)
    torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1)).backward()


def median_time(f):
    f()  # warm-up
    ts = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# The three recipes compute the same product.
ref = fvp_forward_ad()
for other in (fvp_retained(), fvp_double_backward()):
    err = max(float((a - b).norm() / b.norm()) for a, b in zip(other, ref))
    assert err < 1e-3, f"the recipes disagree: relative difference {err}"

P = sum(p.numel() for p in params)
print(f"peer=pytorch-{torch.__version__} params={P} batch={B} model={args.model} "
      f"threads={torch.get_num_threads()}")
tg = median_time(gradient)
print(f"forward_s {median_time(forward):.4f}")
print(f"gradient_s {tg:.4f}")
for name, f in (("fvp_forward_ad_s", fvp_forward_ad), ("fvp_retained_s", fvp_retained),
                ("fvp_double_backward_s", fvp_double_backward)):
    t = median_time(f)
    print(f"{name} {t:.4f}  ratio_to_gradient {t / tg:.2f}")
