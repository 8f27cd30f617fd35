#!/usr/bin/env python3
"""Writes the fuzz seed corpora in fuzz/corpus/: valid inputs and every malformed input named in the I/O
issue (empty, truncated and lying safetensors headers, unknown dtypes, overlaps, absurd shapes, malformed
JSON, unknown layer types and likelihoods, non-chaining layers, bad IDX and CSV files)."""
import gzip
import json
import os
import struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(kind, name, data):
    os.makedirs(os.path.join(root, kind), exist_ok=True)
    with open(os.path.join(root, kind, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def st(header, data=b""):
    h = json.dumps(header).encode() if not isinstance(header, (bytes, str)) else (header.encode() if isinstance(header, str) else header)
    return struct.pack("<Q", len(h)) + h + data


f32 = struct.pack("<4f", 1, 2, 3, 4)
put("safetensors", "valid", st({"0.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                 "__metadata__": {"format": "pt"}}, f32))
put("safetensors", "valid_types", st({"h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                                       "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]},
                                       "i": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]},
                                       "u": {"dtype": "U8", "shape": [2], "data_offsets": [16, 18]},
                                       "n": {"dtype": "I32", "shape": [0], "data_offsets": [18, 18]}}, bytes(18)))
put("safetensors", "empty", b"")
put("safetensors", "short", b"abc")
put("safetensors", "truncated", st({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32)[:30])
put("safetensors", "huge_header", b"\xff" * 7 + b"\x7f{}")
put("safetensors", "header_past_end", struct.pack("<Q", 1000) + b"{}")
put("safetensors", "not_json", st("{not json"))
put("safetensors", "not_object", st("[1, 2]"))
put("safetensors", "unknown_dtype", st({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"a"))
put("safetensors", "outside", st({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"1234"))
put("safetensors", "lying_size", st({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)))
put("safetensors", "overlap", st({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
put("safetensors", "absurd_shape", st({"x": {"dtype": "F64", "shape": [2**32, 2**32], "data_offsets": [0, 8]}}, bytes(8)))
put("safetensors", "negative_shape", st({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}))
put("safetensors", "reversed_offsets", st({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8)))
put("safetensors", "missing_fields", st({"x": {"dtype": "F32"}}))
put("safetensors", "bad_metadata", st({"__metadata__": {"a": 1}}))
# [0, 2^40, 2^40] holds no elements, but its sample shape [2^40, 2^40] overflows int64.
put("safetensors", "zero_times_huge", st({"x": {"dtype": "F32", "shape": [0, 2**40, 2**40], "data_offsets": [0, 0]}}))

# Well-formed safetensors whose contents are wrong for a model or a dataset (the reader must still parse
# them; the model and dataset checks reject them): NaN weights, a foreign tensor name, integer parameters,
# data without targets, inputs of the wrong shape, an out-of-range class index.
nan = struct.pack("<4f", 1, float("nan"), float("inf"), 4)
put("safetensors", "nan_weights", st({"0.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, nan))
put("safetensors", "foreign_name", st({"1.running_mean": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32))
put("safetensors", "int_parameters", st({"0.bias": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16)))
put("safetensors", "no_targets", st({"inputs": {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16]}}, f32))
put("safetensors", "wrong_input_shape", st({"inputs": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                             "targets": {"dtype": "I64", "shape": [2], "data_offsets": [16, 32]}}, f32 + bytes(16)))
put("safetensors", "label_out_of_range", st({"inputs": {"dtype": "U8", "shape": [2, 2], "data_offsets": [0, 4]},
                                              "targets": {"dtype": "I64", "shape": [2], "data_offsets": [8, 24]}},
                                             bytes(8) + struct.pack("<2q", 0, 99)))

mlp = {"input_shape": [4], "likelihood": "categorical",
       "layers": [{"type": "linear", "in_features": 4, "out_features": 3}, {"type": "tanh"},
                  {"type": "linear", "in_features": 3, "out_features": 2, "bias": False}]}
cnn = {"input_shape": [1, 8, 8], "likelihood": "bernoulli",
       "layers": [{"type": "conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": [3, 2], "stride": 2, "padding": [1, 0]},
                  {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "avgpool2d", "kernel_size": 1, "stride": 1},
                  {"type": "flatten"}, {"type": "linear", "in_features": 4, "out_features": 3}, {"type": "gelu"},
                  {"type": "softplus"}, {"type": "leaky_relu", "negative_slope": 0.1}, {"type": "sigmoid"}]}
put("model_spec", "mlp", json.dumps(mlp))
put("model_spec", "cnn", json.dumps(cnn))
put("model_spec", "malformed", '{"input_shape": [3], "layers": [')
put("model_spec", "unknown_layer", json.dumps({"input_shape": [3], "layers": [{"type": "lstm"}]}))
put("model_spec", "unknown_likelihood", json.dumps({"input_shape": [3], "likelihood": "poisson", "layers": []}))
put("model_spec", "unknown_key", json.dumps({"input_shape": [3], "layers": [], "optimizer": "sgd"}))
put("model_spec", "unknown_layer_key", json.dumps({"input_shape": [3], "layers": [{"type": "relu", "inplace": True}]}))
put("model_spec", "not_chaining", json.dumps({"input_shape": [3], "layers": [{"type": "linear", "in_features": 4, "out_features": 2}]}))
put("model_spec", "missing_key", json.dumps({"input_shape": [3], "layers": [{"type": "linear", "out_features": 2}]}))
put("model_spec", "zero_shape", json.dumps({"input_shape": [0], "layers": []}))
# Graphs: a residual block with batch norm, cat and a parameter operand; a token model; a cycle.
put("model_spec", "graph_residual", json.dumps({
    "format_version": 2, "input_shape": [2, 6, 6], "output": "fc",
    "parameters": ["conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias"],
    "layers": [
        {"type": "conv2d", "name": "conv", "id": "conv", "inputs": ["input"], "in_channels": 2, "out_channels": 2,
         "kernel_size": 3, "padding": "same", "bias": False},
        {"type": "batch_norm", "name": "bn", "id": "bn", "inputs": ["conv"], "num_features": 2},
        {"type": "add", "id": "add", "inputs": ["bn", "input"]},
        {"type": "relu", "id": "relu", "inputs": ["add"]},
        {"type": "cat", "id": "cat", "inputs": ["relu", "input"], "dim": 1},
        {"type": "maxpool2d", "id": "pool", "inputs": ["cat"], "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "global_avgpool", "id": "gap", "inputs": ["pool"]},
        {"type": "linear", "name": "fc", "id": "fc", "inputs": ["gap"], "in_features": 4, "out_features": 3}]}))
put("model_spec", "graph_tokens", json.dumps({
    "format_version": 2, "input_shape": [4], "likelihood": "categorical",
    "layers": [
        {"type": "embedding", "name": "tok", "num_embeddings": 8, "embedding_dim": 3},
        {"type": "add", "id": "h", "inputs": ["tok"], "parameter": "pos", "parameter_shape": [4, 3]},
        {"type": "layer_norm", "name": "ln", "normalized_shape": [3]},
        {"type": "linear", "name": "head", "in_features": 3, "out_features": 8},
        {"type": "gelu", "approximate": "tanh"}]}))
put("model_spec", "graph_attention", json.dumps({
    "format_version": 2, "input_shape": [4], "likelihood": "categorical", "output": "head",
    "parameters": ["tok.weight", "ln.weight", "ln.bias", "attn.in_proj_weight", "attn.in_proj_bias",
                   "attn.out_proj.weight", "attn.out_proj.bias"],
    "layers": [
        {"type": "embedding", "name": "tok", "id": "tok", "inputs": ["input"], "num_embeddings": 8, "embedding_dim": 4},
        {"type": "layer_norm", "name": "ln", "id": "ln", "inputs": ["tok"], "normalized_shape": [4]},
        {"type": "multihead_attention", "name": "attn", "id": "attn", "inputs": ["ln"], "embed_dim": 4,
         "num_heads": 2, "attn_mask": "mask", "attn_mask_dtype": "bool"},
        {"type": "add", "id": "res", "inputs": ["tok", "attn"]},
        {"type": "linear", "name": "head", "id": "head", "inputs": ["res"], "in_features": 4, "out_features": 8,
         "bias": False, "parameter_names": ["tok.weight"]}]}))
put("model_spec", "graph_cycle", json.dumps({"input_shape": [3], "layers": [
    {"type": "tanh", "id": "a", "inputs": ["b"]}, {"type": "tanh", "id": "b", "inputs": ["a"]}]}))
put("model_spec", "huge_shape", json.dumps({"input_shape": [2**40, 2**40], "layers": [{"type": "flatten"}]}))
put("model_spec", "negative", json.dumps({"input_shape": [1, 4, 4], "layers": [{"type": "conv2d", "in_channels": 1, "out_channels": -2, "kernel_size": 3}]}))
put("model_spec", "wrong_types", json.dumps({"input_shape": ["a"], "layers": [{"type": 3}]}))


def idx(dims, data, magic=b"\x00\x00\x08"):
    return magic + bytes([len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


put("idx", "images", b"\x01" + idx([2, 3, 3], range(18)))
put("idx", "labels", b"\x00" + idx([3], [0, 1, 2]))
put("idx", "truncated", b"\x01" + idx([2, 3, 3], range(10)))
put("idx", "bad_magic", b"\x00" + idx([3], [0, 1, 2], magic=b"\x01\x02\x08"))
put("idx", "wrong_type", b"\x00" + idx([3], [0, 1, 2], magic=b"\x00\x00\x0d"))
put("idx", "wrong_dims", b"\x01" + idx([3], [0, 1, 2]))
put("idx", "huge_dims", b"\x01" + idx([2**32 - 1, 2**32 - 1, 2**32 - 1], []))
put("idx", "empty", b"\x00")
# 2^24 * 2^16 * 2^24 = 2^64 wraps to 0 in 64 bits: the empty data section matched it.
put("idx", "product_wraps_to_zero", b"\x01" + idx([2**24, 2**16, 2**24], []))
# No images, but a record of 2^47 bytes: refused (found by fuzz_idx against its reference).
put("idx", "zero_records_huge_record", b"\x01" + idx([0, 0x01400060, 0x00600011], []))

put("csv", "categorical", b"\x00" + b"0.5,1\n-1,0\n2e3,1\n")        # 1 feature, categorical
put("csv", "header", b"\x04" + b"a,b,label\n1,2,0\n3,4,1\n")         # 2 features
put("csv", "gaussian", b"\x01" + b"1,0.5,0.25\n2,1,2\n")             # 1 feature, 2 targets
put("csv", "non_numeric", b"\x00" + b"1,0\nx,1\n")
put("csv", "short_line", b"\x04" + b"1,2,0\n1,0\n")
put("csv", "fractional_label", b"\x00" + b"1,0.5\n")
put("csv", "crlf", b"\x00" + b"1,0\r\n2,1\r\n")
put("csv", "empty", b"\x00")
put("csv", "nan_input", b"\x00" + b"nan,1\ninf,0\n")
put("csv", "label_out_of_range", b"\x00" + b"1,7\n1,-1\n")

# fuzz_dataset: byte 0 = format + 6 * likelihood (formats: 0 safetensors, 1 CSV, 2 text with --context 3,
# 3 IDX plain, 4 IDX gzip-compressed by the target, 5 the bytes as a .gz file), bytes 1 and 2 = the share's
# first sample and count (mod 16), then the file (for IDX, the 2x2 images file).
def dataset(fmt, lik, first, count, body):
    return bytes([fmt + 6 * lik, first, count]) + body


x = struct.pack("<10f", *[0.5 * k for k in range(10)])
put("dataset", "safetensors_categorical", dataset(0, 0, 1, 3, st(
    {"inputs": {"dtype": "F32", "shape": [5, 2], "data_offsets": [0, 40]},
     "targets": {"dtype": "I64", "shape": [5], "data_offsets": [40, 80]}}, x + struct.pack("<5q", 0, 1, 2, 1, 0))))
put("dataset", "safetensors_u8_gaussian", dataset(0, 1, 2, 0, st(
    {"inputs": {"dtype": "U8", "shape": [3, 2], "data_offsets": [0, 6]},
     "targets": {"dtype": "F64", "shape": [3, 2], "data_offsets": [8, 56]}}, bytes(range(6)) + bytes(2) +
    struct.pack("<6d", 0.5, -1, 2, 0, 1, 3))))
put("dataset", "safetensors_zero_times_huge", dataset(0, 0, 0, 0, st(
    {"inputs": {"dtype": "F32", "shape": [0, 2**40, 2**40], "data_offsets": [0, 0]},
     "targets": {"dtype": "I64", "shape": [0], "data_offsets": [0, 0]}})))
put("dataset", "csv_header", dataset(1, 0, 1, 2, b"a,b,y\n0.5,1,2\n-1,0,1\n2e3,4,0\n\n7,8,1\r\n"))
put("dataset", "csv_gaussian", dataset(1, 1, 0, 1, b"1,2,0.5,0.25\n3,4,1,2\n"))
put("dataset", "text", dataset(2, 0, 2, 1, b"the quick brown fox jumps over"))
images = idx([3, 2, 2], range(12))
put("dataset", "idx_plain", dataset(3, 0, 1, 2, images))
put("dataset", "idx_gzip", dataset(4, 0, 2, 0, images))
put("dataset", "idx_gz_file", dataset(5, 0, 0, 2, gzip.compress(images, mtime=0)))
put("dataset", "idx_product_wraps_to_zero", dataset(3, 0, 0, 0, idx([2**24, 2**16, 2**24], [])))
print("wrote", root)
