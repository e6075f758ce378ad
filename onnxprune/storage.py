"""Compact storage, the compress stage's last step: each layer's weight written in the smallest form ONNX Runtime loads
with identical values, and the weight-storage figure measured on the graph that is written.

Forms (the smallest wins, per tensor):
  dense    the plain initializer (what TensorRT and every other tool read);
  sparse   a standard `sparse_initializer` (int64 indices: pays below ~1/3 density for fp32);
  packed   non-zero values + uint8 gaps between their positions, decoded by a few constant nodes
           (Cast → CumSum → ScatterElements → Reshape);
  codebook a weight with ≤ 256 distinct values (clustering) as codes into a float codebook, decoded
           with Gather; ≤ 16 values use 4-bit codes (and 4-bit gaps when sparse), two per byte.
The decode nodes read only initializers, so ONNX Runtime folds them into a plain weight when the
session loads: inference runs exactly as with dense weights. The decoded tensor keeps the
weight's name, so every consumer (Q/DQ, shared weights, subgraphs) reads it unchanged.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxPruneError
from .plumbing import default_opset, initializer_map, session

FORMS = ("compact", "sparse", "dense")
P = "onnxprune_store"


def weight_slots(model: onnx.ModelProto, layers) -> dict[str, tuple[str, int]]:
    """Which node, and which of its inputs, holds each layer's weight (by layer name): quantization
    and compact storage rename or replace the weight, the node and the slot stay."""
    nodes = {n.name: n for n in model.graph.node}
    return {layer.name: (layer.node, list(nodes[layer.node].input).index(layer.weight))
            for layer in layers if layer.node in nodes}


def stored_tensors(model: onnx.ModelProto, slots: dict[str, tuple[str, int]]) -> dict[str, onnx.TensorProto]:
    """The initializer that stores each layer's weight (by layer name): the weight itself, or the
    integer tensor under its DequantizeLinear."""
    inits = initializer_map(model.graph)
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    out = {}
    for layer, (node_name, slot) in slots.items():
        node = nodes.get(node_name)
        if node is None or slot >= len(node.input):
            continue
        name = node.input[slot]
        src = producer.get(name)
        if src is not None and src.op_type == "DequantizeLinear":
            name = src.input[0]
        if name in inits:
            out[layer] = inits[name]
    return out


def encode(model: onnx.ModelProto, weights: list[str], storage: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """`weights`: the initializers to store compactly (the layers' weights, or their int8
    versions under DequantizeLinear). Returns the model and each weight's form."""
    if storage not in FORMS:
        raise OnnxPruneError(f"storage must be one of {', '.join(FORMS)}, not {storage!r}")
    m = copy.deepcopy(model)
    for t in m.graph.initializer:  # raw bytes throughout: the storage figures count exactly what is written
        if not t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    if storage == "dense":
        return m, {w: "dense" for w in weights}
    inits = initializer_map(m.graph)
    decode: list[onnx.NodeProto] = []
    forms = {}
    for w in dict.fromkeys(weights):
        if w not in inits:
            continue
        v = numpy_helper.to_array(inits[w])
        form = best_form(v, storage, default_opset(m), m.ir_version)
        forms[w] = form
        if form == "dense":
            continue
        m.graph.initializer.remove(inits[w])
        if form == "sparse":
            flat = v.ravel()
            nz = np.flatnonzero(flat)
            m.graph.sparse_initializer.append(helper.make_sparse_tensor(
                numpy_helper.from_array(flat[nz], w), numpy_helper.from_array(nz.astype(np.int64), f"{w}__{P}_idx"),
                list(v.shape)))
        else:
            tensors, nodes = (_packed if form == "packed" else _codebook)(v, w)
            m.graph.initializer.extend(tensors)
            decode.extend(nodes)
    if decode:  # they read only initializers, so they may come first
        for i, n in enumerate(decode):
            n.name = f"{P}/{i}"
        body = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(decode + body)
        used = {i for n in decode for i in n.input}
        m.graph.initializer.extend(t for t in _shared() if t.name in used)
    return m, forms


def best_form(v: np.ndarray, storage: str, opset: int, ir_version: int) -> str:
    sizes = form_sizes(v, storage, opset, ir_version)
    return min(sizes, key=lambda k: (sizes[k], k != "dense"))


def form_sizes(v: np.ndarray, storage: str, opset: int, ir_version: int) -> dict[str, int]:
    """Bytes that each form `storage` allows would take to store `v`."""
    sizes = {"dense": v.nbytes}
    nnz = int(np.count_nonzero(v))
    if ir_version >= 6 and nnz:  # sparse_initializer is in IR 6 and later
        sizes["sparse"] = nnz * (v.itemsize + 8)
    if storage == "compact" and opset >= 11 and nnz:  # CumSum, ScatterElements
        sizes["packed"] = _entries(v.ravel(), 255) * (v.itemsize + 1) + 64
        if v.dtype.kind == "f" and len(np.unique(v)) <= 256:
            sizes["codebook"] = codebook_layout(v)[2]
    return sizes


def _entries(flat: np.ndarray, max_gap: int) -> int:
    """Stored entries for relative indexing: the non-zeros plus a zero filler wherever a gap
    exceeds `max_gap`."""
    gaps = np.diff(np.concatenate([[-1], np.flatnonzero(flat)]))
    return int(np.sum(-(-gaps // max_gap)))


def _relative(flat: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, positions) of every stored entry: the non-zeros, with fillers (zero values at
    positions that are zero anyway) keeping every gap within 1..max_gap."""
    nz = np.flatnonzero(flat)
    prev = np.concatenate([[-1], nz[:-1]])
    per = -(-(nz - prev) // max_gap)  # entries each gap takes: fillers, then the non-zero
    j = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per) + 1  # 1..per within each gap
    pos = np.where(j == np.repeat(per, per), np.repeat(nz, per), np.repeat(prev, per) + max_gap * j)
    return np.diff(np.concatenate([[-1], pos])), pos.astype(np.int64)


def _scatter(name: str, values: str, gaps: str, zero: np.ndarray, gap_nodes) -> list:
    """Nodes: positions = CumSum(gaps) − 1; name = Reshape(ScatterElements(zeros[n], positions, values))."""
    return [*gap_nodes,
            helper.make_node("Cast", [gaps], [f"{name}__{P}_g64"], to=onnx.TensorProto.INT64),
            helper.make_node("CumSum", [f"{name}__{P}_g64", f"{P}_axis0"], [f"{name}__{P}_cs"]),
            helper.make_node("Sub", [f"{name}__{P}_cs", f"{P}_one"], [f"{name}__{P}_pos"]),
            helper.make_node("ConstantOfShape", [f"{name}__{P}_n"], [f"{name}__{P}_zeros"],
                             value=numpy_helper.from_array(zero.reshape(1))),
            helper.make_node("ScatterElements", [f"{name}__{P}_zeros", f"{name}__{P}_pos", values],
                             [f"{name}__{P}_flat"], axis=0),
            helper.make_node("Reshape", [f"{name}__{P}_flat", f"{name}__{P}_shape"], [name])]


def _consts(name: str, n: int, shape) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.array([n], np.int64), f"{name}__{P}_n"),
            numpy_helper.from_array(np.array(shape, np.int64), f"{name}__{P}_shape")]


def _shared() -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.array(0, np.int64), f"{P}_axis0"),
            numpy_helper.from_array(np.array(1, np.int64), f"{P}_one"),
            numpy_helper.from_array(np.array(16, np.int64), f"{P}_sixteen"),
            numpy_helper.from_array(np.array([-1, 1], np.int64), f"{P}_column"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{P}_flat"),
            numpy_helper.from_array(np.array([0], np.int64), f"{P}_start")]


def _packed(v: np.ndarray, name: str):
    flat = v.ravel()
    gaps, pos = _relative(flat, 255)
    tensors = [numpy_helper.from_array(flat[pos], f"{name}__{P}_values"),
               numpy_helper.from_array(gaps.astype(np.uint8), f"{name}__{P}_gaps"), *_consts(name, v.size, v.shape)]
    nodes = _scatter(name, f"{name}__{P}_values", f"{name}__{P}_gaps", np.zeros(1, v.dtype), [])
    return tensors, nodes


def codebook_layout(v: np.ndarray) -> tuple[int, int, int]:
    """(code bits, gap bits or 0 for dense codes, bytes) of the smallest codebook form of a
    float tensor with ≤ 256 distinct values; 4-bit gaps need more fillers when sparsity is high."""
    bits = 4 if len(np.unique(np.concatenate([[0], v.ravel()]))) <= 16 else 8
    flat = v.ravel()
    options = {0: _nbytes(flat.size, bits)}
    for gap_bits in (4, 8):
        e = _entries(flat, 2 ** gap_bits - 1)
        options[gap_bits] = _nbytes(e, bits) + _nbytes(e, gap_bits)
    gap_bits = min(options, key=options.get)
    return bits, gap_bits, options[gap_bits] + 4 * 2 ** bits + 96


def _nbytes(n: int, bits: int) -> int:
    return int(np.ceil(n * bits / 8))


def _codebook(v: np.ndarray, name: str):
    """Codes into a codebook whose entry 0 is 0.0, dense or relative-indexed (`codebook_layout`)."""
    bits, gap_bits, _ = codebook_layout(v)
    book = np.unique(v.ravel())
    book = np.concatenate([[0], book[book != 0]]).astype(v.dtype)
    book = np.pad(book, (0, 2 ** bits - len(book)))
    flat = v.ravel()
    codes = _codes(flat, book)
    tensors = [numpy_helper.from_array(book, f"{name}__{P}_book"),
               numpy_helper.from_array(np.array(v.shape, np.int64), f"{name}__{P}_shape")]
    nodes = []
    values = f"{name}__{P}_values"
    if not gap_bits:
        code_name = _store_codes(codes, bits, f"{name}__{P}_codes", tensors, nodes)
        nodes.append(helper.make_node("Gather", [f"{name}__{P}_book", code_name], [values], axis=0))
        nodes.append(helper.make_node("Reshape", [values, f"{name}__{P}_shape"], [name]))
        return tensors, nodes
    gaps, pos = _relative(flat, 2 ** gap_bits - 1)
    code_name = _store_codes(codes[pos], bits, f"{name}__{P}_codes", tensors, nodes)
    nodes.append(helper.make_node("Gather", [f"{name}__{P}_book", code_name], [values], axis=0))
    gap_name = _store_codes(gaps, gap_bits, f"{name}__{P}_gaps", tensors, nodes)
    tensors.append(numpy_helper.from_array(np.array([v.size], np.int64), f"{name}__{P}_n"))
    return tensors, _scatter(name, values, gap_name, np.zeros(1, v.dtype), nodes)


def _codes(flat: np.ndarray, book: np.ndarray) -> np.ndarray:
    order = np.argsort(book, kind="stable")
    return order[np.searchsorted(book[order], flat)]


def _store_codes(codes: np.ndarray, bits: int, name: str, tensors: list, nodes: list) -> str:
    """Codes as uint8 (8-bit) or two per byte (4-bit); returns the tensor holding them as int64."""
    if bits == 8:
        tensors.append(numpy_helper.from_array(codes.astype(np.uint8), name))
        nodes.append(helper.make_node("Cast", [name], [f"{name}_i64"], to=onnx.TensorProto.INT64))
        return f"{name}_i64"
    c = np.asarray(codes, np.uint8)
    padded = np.pad(c, (0, len(c) % 2))
    tensors.append(numpy_helper.from_array((padded[0::2] | (padded[1::2] << 4)).astype(np.uint8), name))
    tensors.append(numpy_helper.from_array(np.array([len(c)], np.int64), f"{name}_len"))
    nodes.extend([  # low nibble first: [b0 & 15, b0 >> 4, b1 & 15, …][:len]
        helper.make_node("Cast", [name], [f"{name}_i64"], to=onnx.TensorProto.INT64),
        helper.make_node("Mod", [f"{name}_i64", f"{P}_sixteen"], [f"{name}_lo"]),
        helper.make_node("Div", [f"{name}_i64", f"{P}_sixteen"], [f"{name}_hi"]),
        helper.make_node("Reshape", [f"{name}_lo", f"{P}_column"], [f"{name}_lo2"]),
        helper.make_node("Reshape", [f"{name}_hi", f"{P}_column"], [f"{name}_hi2"]),
        helper.make_node("Concat", [f"{name}_lo2", f"{name}_hi2"], [f"{name}_pairs"], axis=1),
        helper.make_node("Reshape", [f"{name}_pairs", f"{P}_flat"], [f"{name}_all"]),
        helper.make_node("Slice", [f"{name}_all", f"{P}_start", f"{name}_len"], [f"{name}_unpacked"]),
    ])
    return f"{name}_unpacked"


def weight_storage(model: onnx.ModelProto, weight_tensor: str) -> tuple[int, list[str]]:
    """Bytes of everything that stores one weight: the initializers (and sparse initializers)
    behind `weight_tensor` through constant-only nodes (DequantizeLinear's scales and zero
    points, codes, gaps, codebooks). Returns (bytes, tensor names)."""
    inits = {t.name: t for t in model.graph.initializer}
    sparse = {s.values.name: s for s in model.graph.sparse_initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    seen: dict[str, int] = {}

    def walk(name: str) -> bool:
        if name in seen or name == "":
            return True
        if name in inits:
            seen[name] = tensor_bytes(inits[name])
            return True
        if name in sparse:
            seen[name] = tensor_bytes(sparse[name].values) + tensor_bytes(sparse[name].indices)
            return True
        node = producer.get(name)
        if node is None or not node.input:
            return node is not None and node.op_type == "Constant"
        return all(walk(i) for i in node.input)

    walk(weight_tensor)
    shared = {t.name for t in _shared()}
    names = [n for n in seen if n not in shared]
    return sum(seen[n] for n in names), names


def decoded_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer as the array the model computes with: plain ones as they are, sparse
    ones densified, compactly stored ones decoded (by ONNX Runtime, running the decode nodes)."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for s in model.graph.sparse_initializer:
        dense = np.zeros(int(np.prod(s.dims)), onnx.helper.tensor_dtype_to_np_dtype(s.values.data_type))
        dense[numpy_helper.to_array(s.indices).astype(np.int64)] = numpy_helper.to_array(s.values)
        out[s.values.name] = dense.reshape(tuple(s.dims))
    decode = [n for n in model.graph.node if n.name.startswith(f"{P}/")]
    if decode:
        read = {i for n in decode for i in n.input}
        names = [o for n in decode for o in n.output if o not in read]
        g = helper.make_graph(decode, "decode", [], [onnx.ValueInfoProto(name=n) for n in names],
                              list(model.graph.initializer))
        m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        values = session(m, "the weight decoding nodes").run(names, {})
        out.update(zip(names, values))
        for n in decode:
            for i in n.input:
                out.pop(i, None)
    return out


def tensor_bytes(t: onnx.TensorProto) -> int:
    return len(t.raw_data) if t.HasField("raw_data") else numpy_helper.to_array(t).nbytes
