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


# (name, module factory, one sample's shape)
MODELS = [("mlp", mlp, [4]), ("residual", Residual, [4]), ("cnn", cnn, [1, 5, 5])]


def make(name, samples=9, seed=0):
    """The module (float64, seeded), its input shape and a categorical batch."""
    factory, shape = {n: (f, s) for n, f, s in MODELS}[name]
    torch.manual_seed(seed)
    module = factory().double().eval()
    x = torch.randn(samples, *shape)
    y = torch.randint(0, 3, (samples,))
    return module, shape, x, y


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def outputs_at(module, theta, x):
    """The module's outputs at flat parameters theta (model.parameters() order)."""
    params, offset = {}, 0
    for name, p in module.named_parameters():
        params[name] = theta[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return stateless.functional_call(module, params, (x,))


def loss_and_gradient(module, x, y):
    module.zero_grad()
    loss = nn.functional.cross_entropy(module(x), y)
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
    module.zero_grad()
    return loss.item(), g


def jacobian(module, x):
    """J [N, C, P]: d outputs / d theta."""
    theta = flat(module)
    return torch.autograd.functional.jacobian(lambda t: outputs_at(module, t, x), theta)


def output_fisher(z):
    """The categorical output Fisher diag(p) − p pᵀ of every sample [N, C, C]."""
    p = torch.softmax(z, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def dense_fisher(module, x, y, kind="exact"):
    """F = 1/N Σ_n J_nᵀ H_n J_n: exact H_n = diag(p) − p pᵀ; empirical H_n = s sᵀ, s = p − e_y."""
    J = jacobian(module, x)
    with torch.no_grad():
        z = module(x)
    if kind == "exact":
        H = output_fisher(z)
    else:
        s = torch.softmax(z, dim=1) - nn.functional.one_hot(y, z.shape[1]).double()
        H = s[:, :, None] * s[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", J, H, J) / x.shape[0]


def fisher_vector_product(module, x, v):
    """F v for the exact Fisher without forming anything: u = J v by forward mode (jvp), w = H u per sample,
    then Jᵀ w by reverse mode (vjp)."""
    theta = flat(module)
    f = lambda t: outputs_at(module, t, x)  # noqa: E731
    z, u = torch.autograd.functional.jvp(f, theta, v)
    p = torch.softmax(z.detach(), dim=1)
    w = p * u - p * (p * u).sum(dim=1, keepdim=True)
    _, Fv = torch.autograd.functional.vjp(f, theta, w / x.shape[0])
    return Fv
