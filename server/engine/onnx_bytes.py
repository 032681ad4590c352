"""A tiny ONNX graph, serialised by hand, that gathers and concatenates rows on the device.

The serving install has onnxruntime but not the `onnx` package, and compaction must not copy
features to the host. ONNX Runtime runs Concat and Gather on whatever device holds the tensors, so
the merge step is itself a (two-node) ONNX model; this module writes its protobuf bytes directly
(field numbers from onnx.proto3). tests/server checks the bytes with onnx.checker.
"""

from __future__ import annotations

# onnx.TensorProto.DataType values.
ELEM_TYPES = {"float32": 1, "float16": 10, "int64": 7}
IR_VERSION = 8
OPSET = 13
_VARINT, _LEN = 0, 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def _msg(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _msg(field, text.encode("utf-8"))


def _value_info(name: str, elem_type: int, rank: int) -> bytes:
    # TypeProto.Tensor: elem_type = 1, shape = 2; TensorShapeProto.dim = 1; Dimension.dim_param = 2.
    dims = b"".join(_msg(1, _str(2, f"{name}_d{i}")) for i in range(rank))
    tensor = _int(1, elem_type) + _msg(2, dims)
    # ValueInfoProto: name = 1, type = 2; TypeProto.tensor_type = 1.
    return _str(1, name) + _msg(2, _msg(1, tensor))


def _node(op: str, inputs: list[str], outputs: list[str], axis: int) -> bytes:
    # NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5.
    # AttributeProto: name = 1, i = 3, type = 20 (INT = 2).
    attr = _str(1, "axis") + _int(3, axis) + _int(20, 2)
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    return body + _str(3, op.lower()) + _str(4, op) + _msg(5, attr)


def merge_rows_model(num_parts: int, rank: int, dtype: str = "float32") -> bytes:
    """ModelProto bytes: y = Gather(Concat(x_0 .. x_{n-1}, axis=0), rows, axis=0).

    x_i: [b_i, ...] of `dtype` and `rank` (same trailing dims); rows: int64 [m] indices into the
    concatenation; y: [m, ...].
    """
    if num_parts < 1:
        raise ValueError("a merge needs at least one part")
    elem = ELEM_TYPES[dtype]
    names = [f"x_{i}" for i in range(num_parts)]
    nodes = _msg(1, _node("Concat", names, ["cat"], 0)) + _msg(
        1, _node("Gather", ["cat", "rows"], ["y"], 0)
    )
    inputs = b"".join(_msg(11, _value_info(n, elem, rank)) for n in names)
    inputs += _msg(11, _value_info("rows", ELEM_TYPES["int64"], 1))
    # GraphProto: node = 1, name = 2, input = 11, output = 12.
    graph = nodes + _str(2, f"merge_{num_parts}") + inputs + _msg(12, _value_info("y", elem, rank))
    # ModelProto: ir_version = 1, producer_name = 2, graph = 7, opset_import = 8 (version = 2).
    return _int(1, IR_VERSION) + _str(2, "elf-serving") + _msg(7, graph) + _msg(8, _int(2, OPSET))
