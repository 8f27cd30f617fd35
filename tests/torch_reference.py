"""PyTorch references of the oracle tests (through torch_oracle.py, which imports PyTorch or ends the script):
the mean negative log-likelihood as PyTorch users write it, H u for each likelihood and Fisher kind from the
formulas, the Fisher-vector product 1/(N·T) Σ J_nᵀ H_n J_n v by PyTorch's double-backward trick and the dense
Fisher from it."""
import torch
import torch.nn.functional as F


def rel(a, b):
    return float((a - b).norm() / max(a.norm(), b.norm()))


def flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def per_position(z, y):
    """[N, T, C] outputs as N·T rows, as PyTorch's cross_entropy(logits.view(-1, C), y.view(-1)) reads them."""
    if z.dim() == 3:
        return z.reshape(-1, z.shape[-1]), y.reshape(-1) if y.dim() == 2 and y.dtype == torch.long else y.reshape(-1, z.shape[-1])
    return z, y


def nll(lik, z, y):
    z, y = per_position(z, y)
    N = z.shape[0]
    if lik == "categorical":
        return F.cross_entropy(z, y)
    if lik == "gaussian":
        return 0.5 * ((z - y) ** 2).sum() / N
    return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / N


def output_fisher_times(lik, kind, z, y, u):
    z = z.detach()
    C = z.shape[1]
    if kind == "empirical":
        if lik == "categorical":
            s = torch.softmax(z, 1) - F.one_hot(y, C).double()
        elif lik == "gaussian":
            s = z - y
        else:
            s = torch.sigmoid(z) - y
        return s * (s * u).sum(1, keepdim=True)
    if lik == "categorical":
        p = torch.softmax(z, 1)
        return p * u - p * (p * u).sum(1, keepdim=True)
    if lik == "gaussian":
        return u
    q = torch.sigmoid(z)
    return q * (1 - q) * u


def fvp(model, x, y, lik, kind, vec):
    """1/(N·T) Σ J_nᵀ H_n J_n v with J v by the double-backward trick; for [N, T, C] outputs H_n is
    block-diagonal over positions (exact) or the outer product of the sample's stacked scores (empirical)."""
    params = list(model.parameters())
    logits = model(x)
    w = torch.zeros_like(logits, requires_grad=True)
    g = torch.autograd.grad(logits, params, grad_outputs=w, create_graph=True)
    jv = torch.autograd.grad(g, w, grad_outputs=vec)[0]
    count = logits.shape[0] * (logits.shape[1] if logits.dim() == 3 else 1)
    if logits.dim() == 3 and kind == "empirical":  # s_n stacks the positions' scores: H_n u = s_n (s_n · u_n)
        z, yy = per_position(logits.detach(), y)
        s = torch.softmax(z, 1) - F.one_hot(yy, z.shape[1]).double()
        s = s.reshape(logits.shape)
        hu = s * (s * jv).sum((1, 2), keepdim=True)
    else:
        z, yy = per_position(logits, y)
        hu = output_fisher_times(lik, kind, z, yy, jv.reshape(z.shape)).reshape(logits.shape)
    return flat(torch.autograd.grad(logits, params, grad_outputs=hu / count))


def dense_fisher(model, x, y, lik):
    """The exact Fisher as a dense P × P matrix, one column per unit vector."""
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    cols = []
    for k in range(P):
        e = torch.zeros(P)
        e[k] = 1
        vec, offset = [], 0
        for p in params:
            vec.append(e[offset:offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        cols.append(fvp(model, x, y, lik, "exact", vec))
    return torch.stack(cols, 1)
