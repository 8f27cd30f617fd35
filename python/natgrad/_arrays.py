"""Arrays in and out: NumPy arrays or CPU torch tensors in, the same kind back. torch is imported only when a
tensor is seen, so the package works with NumPy alone."""
import sys

import numpy as np

DTYPES = {"float64": np.float64, "float32": np.float32}


def _is_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def kind_of(x):
    """'torch' for a torch tensor, else 'numpy'."""
    return "torch" if _is_tensor(x) else "numpy"


def to_numpy(x, what, dtype=None):
    """x as a C-ordered NumPy array (no copy where dtype and layout allow). A tensor that requires grad is
    detached; a tensor on a GPU is refused."""
    if _is_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(f"{what} is on device {x.device}: natgrad computes on the CPU; pass {what}.cpu()")
        x = x.detach().resolve_conj().resolve_neg().numpy()
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return np.ascontiguousarray(x, dtype=dtype)


def like(array, kind):
    """A NumPy result returned as `kind` ('torch': a tensor sharing its memory)."""
    if kind == "torch":
        import torch
        return torch.from_numpy(array)
    return array
