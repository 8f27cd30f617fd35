#!/usr/bin/env python3
"""Export a PyTorch nn.Sequential to natgrad's files, and read natgrad's outputs back.

    from export_torch import export_model, export_data, load_safetensors, to_vector
    export_model(model, input_shape=[1, 28, 28], likelihood="categorical", directory="out")
        -> out/model.json, out/weights.safetensors
    export_data("out/data.safetensors", inputs, targets)
    d = load_safetensors("direction.safetensors")          # {name: tensor}, state_dict names
    model.load_state_dict(d) / torch.nn.utils.vector_to_parameters(to_vector(model, d), model.parameters())

Command line (writes a small example model and dataset):
    python3 tools/export_torch.py --example cnn --out DIR [--samples N]

Only the modules natgrad knows are accepted (Linear, Conv2d, ReLU, Tanh, Sigmoid, GELU, Softplus,
LeakyReLU, Flatten, MaxPool2d, AvgPool2d) with the arguments natgrad supports; anything else is an error.
safetensors is written directly (8-byte little-endian header length, JSON header, raw little-endian data).
"""
import argparse
import json
import os
import struct

import torch

_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8",
           torch.float16: "F16", torch.bfloat16: "BF16"}
_TORCH = {v: k for k, v in _DTYPES.items()}


def save_safetensors(path, tensors):
    """Writes {name: tensor} (contiguous, row-major) as safetensors, atomically."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_safetensors(path):
    """Reads a safetensors file into {name: tensor}."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = bytearray(data[8 + n + b:8 + n + e])
        t = torch.frombuffer(buf, dtype=_TORCH[info["dtype"]]) if buf else torch.empty(0, dtype=_TORCH[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def module_spec(m):
    nn = torch.nn
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or _pair(m.dilation) != [1, 1] or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"{m}: natgrad supports conv2d with groups=1, dilation=1, numeric zero padding")
        return {"type": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
                "bias": m.bias is not None}
    if isinstance(m, nn.ReLU):
        return {"type": "relu"}
    if isinstance(m, nn.Tanh):
        return {"type": "tanh"}
    if isinstance(m, nn.Sigmoid):
        return {"type": "sigmoid"}
    if isinstance(m, nn.GELU):
        if getattr(m, "approximate", "none") != "none":
            raise ValueError("natgrad's gelu is the exact (erf) form")
        return {"type": "gelu"}
    if isinstance(m, nn.Softplus):
        if m.beta != 1 or m.threshold != 20:
            raise ValueError("natgrad's softplus has beta=1, threshold=20")
        return {"type": "softplus"}
    if isinstance(m, nn.LeakyReLU):
        return {"type": "leaky_relu", "negative_slope": m.negative_slope}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ValueError("natgrad's flatten flattens all but the batch dimension")
        return {"type": "flatten"}
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        if _pair(m.padding) != [0, 0] or m.ceil_mode or (isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != [1, 1]):
            raise ValueError(f"{m}: natgrad pools without padding, dilation or ceil_mode")
        spec = {"type": "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d", "kernel_size": _pair(m.kernel_size)}
        if m.stride is not None:
            spec["stride"] = _pair(m.stride)
        return spec
    raise ValueError(f"module {type(m).__name__} is not supported by natgrad")


def export_model(model, input_shape, likelihood, directory):
    """Writes model.json and weights.safetensors for an nn.Sequential."""
    if not isinstance(model, torch.nn.Sequential):
        raise ValueError("natgrad reads torch.nn.Sequential models")
    os.makedirs(directory, exist_ok=True)
    # Each layer carries its module name, so an nn.Sequential(OrderedDict(fc1=..., ...)) keeps "fc1.weight".
    spec = {"format_version": 1, "input_shape": list(input_shape), "likelihood": likelihood,
            "layers": [dict(module_spec(m), name=name) for name, m in model.named_children()]}
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(spec, f, indent=1)
    save_safetensors(os.path.join(directory, "weights.safetensors"), dict(model.state_dict()))


def export_data(path, inputs, targets):
    """inputs [N, ...] float or uint8; targets int64 [N] (categorical) or float [N, C]."""
    save_safetensors(path, {"inputs": inputs, "targets": targets})


def to_vector(model, tensors):
    """A {name: tensor} dict in state_dict names as one flat vector (parameters_to_vector order)."""
    return torch.cat([tensors[name].reshape(-1).to(p.dtype) for name, p in model.named_parameters()])


def example(kind):
    torch.manual_seed(0)
    if kind == "cnn":
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10)), [1, 28, 28]
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 10)), [1, 28, 28]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=256)
    a = ap.parse_args()
    model, shape = example(a.example)
    export_model(model, shape, "categorical", a.out)
    export_data(os.path.join(a.out, "data.safetensors"), torch.rand(a.samples, *shape),
                torch.randint(0, 10, (a.samples,)))
    print(f"wrote {a.out}/model.json, weights.safetensors, data.safetensors")
