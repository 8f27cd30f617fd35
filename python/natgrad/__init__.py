"""natgrad in-process: the natural gradient, Fisher products and spectra of a PyTorch (or natgrad) model.

    model = natgrad.Model.from_torch(module, input_shape, likelihood="categorical")   # traced, no files
    model = natgrad.Model.load("model.json", "weights.safetensors")
    fisher = natgrad.Fisher(model, inputs, targets, kind="exact", dtype="float64")
    fisher.loss, fisher.gradient(), fisher.matvec(v)
    d, report = fisher.solve(1e-3)
    fisher.eigenvalues(10), fisher.as_linear_operator()
    opt = natgrad.optim.KFAC(module, input_shape); loss = opt.step(inputs, targets)

Arrays are NumPy arrays or CPU torch tensors, flat in model.parameters() order, and come back as the type the
inputs were. The computations run in natgrad's C++ library with the GIL released (docs/python.md).
"""
import os

from . import _core
from .fisher import Fisher
from .model import Model

__all__ = ["Model", "Fisher", "optim", "set_num_threads", "num_threads"]


def __getattr__(name):
    # natgrad.optim needs torch: imported on first use, so that the rest works with NumPy alone.
    if name == "optim":
        import importlib
        return importlib.import_module(".optim", __name__)
    raise AttributeError(f"module 'natgrad' has no attribute {name!r}")


def set_num_threads(threads):
    """natgrad's thread count for every Fisher and optimizer made without threads= (0: all cores). PyTorch's
    own threads are not changed: the two never compute at the same time."""
    _core.set_num_threads(int(threads))


def num_threads():
    """natgrad's thread count for threads=None: OMP_NUM_THREADS (its first number) if it is set, else all the
    cores this process may run on, unless set_num_threads changed it. Not torch.get_num_threads(): natgrad
    computes with the GIL released while the Python thread that called it waits, so PyTorch's threads are idle
    meanwhile and natgrad can have the cores to itself."""
    return _core.num_threads()


def _default_threads():
    # Fixed at import: the library's own default would be the calling thread's OpenMP count, which importing
    # torch changes (Debian's PyTorch shares natgrad's OpenMP runtime and sets it to its own count).
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else 0


set_num_threads(_default_threads())
