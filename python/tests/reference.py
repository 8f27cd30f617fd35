"""PyTorch autograd references for the package's tests, written from docs/math.md's definitions (not from
natgrad's code): the loss, the gradient, the Jacobian of the outputs with respect to the flat parameters, the
Fisher formed densely from it, and F v by forward- then reverse-mode autograd."""
import torch
import torch.nn as nn
from torch.nn.utils import stateless

torch.set_default_dtype(torch.float64)


class Residual(nn.Module):
    """A small graph: a skip connection around a block, then a head."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.relu(self.block(h))
        return self.head(h)


def mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention (an additive mask buffer) and an MLP."""

    def __init__(self, d, heads, T):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A language model with a prediction at every position, its output layer tied to the token embedding."""

    def __init__(self, vocab=7, T=4, d=8, heads=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.5)
        self.block = Block(d, heads, T)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        return self.head(self.ln(self.block(self.tok(idx) + self.pos)))


# (name, module factory, one sample's shape); the GPT's samples are 4 tokens of 7 with a label at each.
MODELS = [("mlp", mlp, [4]), ("residual", Residual, [4]), ("cnn", cnn, [1, 5, 5]), ("gpt", TinyGPT, [4])]


def make(name, samples=9, seed=0):
    """The module (float64, seeded), its input shape and a categorical batch."""
    factory, shape = {n: (f, s) for n, f, s in MODELS}[name]
    torch.manual_seed(seed)
    module = factory().double().eval()
    if name == "gpt":
        return module, shape, torch.randint(0, 7, (samples, 4)), torch.randint(0, 7, (samples, 4))
    x = torch.randn(samples, *shape)
    y = torch.randint(0, 3, (samples,))
    return module, shape, x, y


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def outputs_at(module, theta, x):
    """The module's outputs at flat parameters theta (model.parameters() order)."""
    slices, offset = {}, 0
    for p in module.parameters():
        slices[id(p)] = theta[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    # Every name a parameter goes by (a tied weight has two: named_parameters() lists only the first).
    params = {name: slices[id(t)] for name, t in module.state_dict(keep_vars=True).items() if id(t) in slices}
    return stateless.functional_call(module, params, (x,))


def loss_and_gradient(module, x, y):
    """The mean over every position: cross_entropy(logits.view(-1, C), y.view(-1))."""
    module.zero_grad()
    z = module(x)
    loss = nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
    module.zero_grad()
    return loss.item(), g


def jacobian(module, x):
    """J [N, T, C, P]: d outputs / d theta (T = 1 for an output [C])."""
    theta = flat(module)
    J = torch.autograd.functional.jacobian(lambda t: outputs_at(module, t, x), theta)
    return J.reshape(x.shape[0], -1, J.shape[-2], J.shape[-1])


def dense_fisher(module, x, y, kind="exact"):
    """F = 1/(N T) Σ_n J_nᵀ H_n J_n. Exact: H_n block-diagonal over the positions, each block diag(p) − p pᵀ.
    Empirical: H_n = s_n s_nᵀ, s_n the sample's stacked scores p − e_y over all its positions."""
    J = jacobian(module, x)
    N, T, C, P = J.shape
    with torch.no_grad():
        p = torch.softmax(module(x).reshape(N, T, C), dim=-1)
    if kind == "exact":
        H = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
        return torch.einsum("ntcp,ntcd,ntdq->pq", J, H, J) / (N * T)
    s = p - nn.functional.one_hot(y.reshape(N, T), C).double()
    Js = torch.einsum("ntcp,ntc->np", J, s)
    return Js.T @ Js / (N * T)


def fisher_vector_product(module, x, v):
    """F v for the exact Fisher without forming anything: u = J v by forward mode (jvp), w = H u per sample,
    then Jᵀ w by reverse mode (vjp)."""
    theta = flat(module)
    f = lambda t: outputs_at(module, t, x)  # noqa: E731
    z, u = torch.autograd.functional.jvp(f, theta, v)
    p = torch.softmax(z.detach(), dim=-1)
    w = p * u - p * (p * u).sum(dim=-1, keepdim=True)
    _, Fv = torch.autograd.functional.vjp(f, theta, w / (z.numel() // z.shape[-1]))
    return Fv
