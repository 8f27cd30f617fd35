#!/usr/bin/env python3
"""A Hessian-free (natural-gradient) step in PyTorch, the peer of natgrad's second-order step with its safeguards
off: the loss and gradient g on the batch; d = (F + λI)⁻¹g by exactly --cg-iters CG iterations (default 10,
no stopping on a tolerance) started from 0.95 × the previous d (from the second step; the first from 0), F the
exact Fisher (the generalized Gauss–Newton) on the first --curvature-batch samples; θ ← θ − η d. λ is fixed.
This is what `natgrad train --optimizer natgrad --solver cg --cg-max-iters 10 --damping-adapt off
--line-search off` does, and natgrad-bench's train/step_natgrad_cg10.

Fisher products F v = 1/B Σ J_nᵀ H_n J_n v by the three recipes of benchmarks/torch_fvp_bench.py:
  forward_ad       J v by forward-mode AD in a fresh forward pass, then Jᵀ (H J v) by one backward pass;
  retained         the curvature batch's forward graph built once per step (the gradient's own when the
                   curvature batch is the batch) with the double-vjp graph of w ↦ Jᵀ w on it; per product J v
                   by one backward over that graph, Jᵀ (H J v) by one more;
  double_backward  per product a fresh forward pass, the double-vjp graph, J v, Jᵀ (H J v).
A step costs the gradient, (1 when warm) + 10 products, and the vector arithmetic of CG, as natgrad's does
(its optimizer does not recompute the true residual at CG's iteration limit).

    /usr/bin/python3 benchmarks/torch_hf_step.py                 # the benchmark MLP, as natgrad-bench's train/
    /usr/bin/python3 benchmarks/torch_hf_step.py --model fashion # MLP 784-256-256-10 relu, batch 128
    /usr/bin/python3 benchmarks/torch_hf_step.py --check         # the recipes and CG against a dense Fisher

Models: bench, natgrad-bench's MLP 784-1024-1024-10 tanh on 1000 random samples (categorical); fashion,
784-256-256-10 relu on 128. Each recipe is timed (the median of --reps steps after one warm-up step, the steps
continuing from each other) and the fastest is reported as `hf_step_s`. Run with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset. Importable: HessianFreeStep is torch_train_peer.py's --optimizer hf."""
import argparse
import statistics
import time

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

RECIPES = ("forward_ad", "retained", "double_backward")


def functional_call(net, names, ps, x):
    call = torch.func.functional_call if hasattr(torch, "func") else torch.nn.utils.stateless.functional_call
    return call(net, dict(zip(names, ps)), (x,))


def loss_of(likelihood, z, target):
    """natgrad's losses: categorical, the mean cross-entropy; bernoulli, BCEWithLogits summed over outputs and
    averaged over the batch."""
    if likelihood == "categorical":
        return F.cross_entropy(z, target)
    return F.binary_cross_entropy_with_logits(z, target, reduction="sum") / z.shape[0]


def output_fisher(likelihood, z, u):
    """H u / B at the outputs z: categorical (diag(p) − p pᵀ) u, bernoulli p (1 − p) u."""
    z = z.detach()
    if likelihood == "categorical":
        p = torch.softmax(z, -1)
        return (p * u - p * (p * u).sum(-1, keepdim=True)) / z.shape[0]
    p = torch.sigmoid(z)
    return p * (1 - p) * u / z.shape[0]


class HessianFreeStep:
    """Steps θ ← θ − η (F + λI)⁻¹ g by `cg_iters` CG iterations warm-started from warm × the previous d.
    The parameters are the module's, updated in place."""

    def __init__(self, net, likelihood, recipe="retained", damping=1.0, lr=1.0, cg_iters=10, warm=0.95,
                 curvature_batch=0):
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe}")
        self.net, self.likelihood, self.recipe = net, likelihood, recipe
        self.damping, self.lr, self.cg_iters, self.warm = damping, lr, cg_iters, warm
        self.curvature_batch = curvature_batch
        self.names = [n for n, _ in net.named_parameters()]
        self.params = [p for _, p in net.named_parameters()]
        self.sizes = [p.numel() for p in self.params]
        self.previous = None  # the previous d (flat)
        self.products = 0  # Fisher products of the last step

    def _unflat(self, v):
        return [t.view_as(p) for t, p in zip(torch.split(v, self.sizes), self.params)]

    def _products(self, ps, x, xc, target, z, recipe):
        """The loss's gradient was taken; returns v ↦ F v (flat) on the curvature batch xc."""
        lk = self.likelihood
        if recipe == "retained":
            zc = z if xc is x else functional_call(self.net, self.names, ps, xc)
            w = torch.zeros_like(zc, requires_grad=True)
            jtw = torch.autograd.grad(zc, ps, w, create_graph=True, retain_graph=True)

            def product(v):
                u = torch.autograd.grad(jtw, w, self._unflat(v), retain_graph=True)[0]
                return torch.cat([t.reshape(-1) for t in
                                  torch.autograd.grad(zc, ps, output_fisher(lk, zc, u), retain_graph=True)])
            return product
        if recipe == "forward_ad":
            def product(v):
                with fwAD.dual_level():
                    dual = [fwAD.make_dual(p.detach().requires_grad_(), t) for p, t in zip(ps, self._unflat(v))]
                    zc, u = fwAD.unpack_dual(functional_call(self.net, self.names, dual, xc))
                # (out of the dual level the dual tensors are plain ones, the graph's inputs)
                return torch.cat([t.reshape(-1) for t in torch.autograd.grad(zc, dual, output_fisher(lk, zc, u))])
            return product

        def product(v):  # double_backward
            zc = functional_call(self.net, self.names, ps, xc)
            w = torch.zeros_like(zc, requires_grad=True)
            jtw = torch.autograd.grad(zc, ps, w, create_graph=True)
            u = torch.autograd.grad(jtw, w, self._unflat(v), retain_graph=True)[0]
            return torch.cat([t.reshape(-1) for t in torch.autograd.grad(zc, ps, output_fisher(lk, zc, u))])
        return product

    def step(self, x, target, recipe=None):
        """One step on the batch (x, target); returns the loss before the update."""
        recipe = recipe or self.recipe
        ps = [p.detach().requires_grad_() for p in self.params]
        z = functional_call(self.net, self.names, ps, x)
        loss = loss_of(self.likelihood, z, target)
        nc = self.curvature_batch if 0 < self.curvature_batch < len(x) else len(x)
        xc = x if nc == len(x) else x[:nc]
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, ps, retain_graph=recipe == "retained")])
        fisher = self._products(ps, x, xc, target, z, recipe)
        lam = self.damping
        self.products = 0

        def apply(v):
            self.products += 1
            return fisher(v) + lam * v
        # CG on (F + λI) d = g, exactly cg_iters iterations.
        if self.previous is not None and self.warm > 0:
            d = self.warm * self.previous
            r = g - apply(d)
        else:
            d, r = torch.zeros_like(g), g.clone()
        p, rr = r.clone(), torch.dot(r, r)
        for _ in range(self.cg_iters):
            ap = apply(p)
            alpha = rr / torch.dot(p, ap)
            d.add_(p, alpha=alpha)
            r.sub_(ap, alpha=alpha)
            rr_new = torch.dot(r, r)
            p.mul_(rr_new / rr).add_(r)
            rr = rr_new
        self.previous = d
        with torch.no_grad():
            for q, t in zip(self.params, self._unflat(d)):
                q.sub_(self.lr * t)
        return loss.detach()


def mlp(sizes, activation):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return torch.nn.Sequential(*layers)


def check():
    """Each recipe's product against a dense Fisher 1/B Σ J_nᵀ H_n J_n built from the Jacobian, and a step with
    CG run to P iterations against θ − η (F + λI)⁻¹ g by torch.linalg.solve; float64, a tiny MLP."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    worst = 0.0
    for lk in ("categorical", "bernoulli"):
        net = mlp([6, 5, 4, 3], torch.nn.Tanh)
        x = torch.randn(7, 6)
        target = torch.randint(0, 3, (7,)) if lk == "categorical" else torch.rand(7, 3)
        names = [n for n, _ in net.named_parameters()]
        ps = [p.detach() for p in net.parameters()]
        sizes = [p.numel() for p in ps]

        def out(theta):
            return functional_call(net, names, [t.view_as(p) for t, p in zip(torch.split(theta, sizes), ps)], x)
        theta = torch.cat([p.reshape(-1) for p in ps])
        J = torch.autograd.functional.jacobian(out, theta)  # [B, C, P]
        z = out(theta).detach()
        if lk == "categorical":
            pr = torch.softmax(z, -1)
            H = torch.diag_embed(pr) - pr[:, :, None] * pr[:, None, :]
        else:
            pr = torch.sigmoid(z)
            H = torch.diag_embed(pr * (1 - pr))
        Fd = torch.einsum("bcp,bcd,bdq->pq", J, H, J) / x.shape[0]
        g = torch.autograd.grad(loss_of(lk, out(theta.requires_grad_()), target), theta)[0]
        lam, eta = 0.3, 0.7
        want = theta.detach() - eta * torch.linalg.solve(Fd + lam * torch.eye(len(theta)), g)
        v = torch.randn(len(theta))
        for recipe in RECIPES:
            hf = HessianFreeStep(net, lk, recipe)
            gps = [p.detach().requires_grad_() for p in ps]
            zz = functional_call(net, names, gps, x)
            loss = loss_of(lk, zz, target)
            torch.autograd.grad(loss, gps, retain_graph=True)
            fv = hf._products(gps, x, x, target, zz, recipe)(v)
            err = float((fv - Fd @ v).norm() / (Fd @ v).norm())
            step = HessianFreeStep(mlp([6, 5, 4, 3], torch.nn.Tanh), lk, recipe, damping=lam, lr=eta,
                                   cg_iters=len(theta))
            step.net.load_state_dict(net.state_dict())
            step.step(x, target)
            got = torch.cat([p.detach().reshape(-1) for p in step.net.parameters()])
            err_step = float((got - want).norm() / want.norm())
            print(f"check {lk:11s} {recipe:15s} F v vs dense: {err:.1e}  step (CG to P = {len(theta)}) vs solve: "
                  f"{err_step:.1e}")
            worst = max(worst, err, err_step)
    ok = worst < 1e-9
    print("check:", "ok" if ok else "FAILED", f"(worst {worst:.1e}, tolerance 1e-9)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["bench", "fashion"], default="bench")
    ap.add_argument("--batch", type=int, default=None, help="default 1000 (bench), 128 (fashion)")
    ap.add_argument("--curvature-batch", type=int, default=0, help="curvature on the first B2 samples (0: all)")
    ap.add_argument("--cg-iters", type=int, default=10)
    ap.add_argument("--damping", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--recipe", choices=("all",) + RECIPES, default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--check", action="store_true", help="verify the products and the step on a tiny MLP; exit")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.check:
        raise SystemExit(0 if check() else 1)
    torch.manual_seed(0)
    net = mlp([784, 1024, 1024, 10], torch.nn.Tanh) if a.model == "bench" else mlp([784, 256, 256, 10], torch.nn.ReLU)
    B = a.batch or (1000 if a.model == "bench" else 128)
    x, y = torch.rand(B, 784), torch.randint(0, 10, (B,))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    print(f"peer=pytorch-{torch.__version__} model={a.model} params={sum(p.numel() for p in net.parameters())} "
          f"batch={B} curvature_batch={a.curvature_batch or B} cg_iters={a.cg_iters} damping={a.damping} "
          f"threads={torch.get_num_threads()}")
    # The gradient alone (forward + backward of the mean cross-entropy), the yardstick of natgrad-bench's ratios.
    grads = []
    for _ in range(a.reps + 1):
        t0 = time.perf_counter()
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        grads.append(time.perf_counter() - t0)
    tg = statistics.median(grads[1:])
    print(f"gradient_s {tg:.4f}")
    best = None
    for recipe in RECIPES if a.recipe == "all" else (a.recipe,):
        net.load_state_dict(start)
        hf = HessianFreeStep(net, "categorical", recipe, a.damping, a.lr, a.cg_iters, curvature_batch=a.curvature_batch)
        times, losses = [], []
        for _ in range(a.reps + 1):  # the first: warm-up (and the cold start of CG)
            t0 = time.perf_counter()
            losses.append(float(hf.step(x, y)))
            times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        print(f"hf_step_{recipe}_s {t:.4f}  ratio_to_gradient {t / tg:.2f}  products/step {hf.products}  "
              f"losses {losses[0]:.4f} -> {losses[-1]:.4f}")
        best = (t, recipe) if best is None or t < best[0] else best
    print(f"hf_step_s {best[0]:.4f}  (fastest recipe: {best[1]})")


if __name__ == "__main__":
    main()
