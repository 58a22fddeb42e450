"""A minimal writer of ONNX models (protobuf wire format) for the graphs ``unet_graph`` builds.

Why not the ``onnx`` package: importing it takes 1-1.5 s on a 2-core machine, more than the whole start-up
budget of ``monaiunetseg segment``, and ONNX Runtime only needs the serialized bytes. Only the handful of
messages and fields a plain feed-forward graph needs are written (field numbers from ``onnx.proto``, IR v8);
``tests/test_fast_predictor.py`` checks the output with ``onnx.checker`` where the ``onnx`` package is installed.
"""

from __future__ import annotations

import struct

import numpy as np

IR_VERSION = 8
OPSET = 17
FLOAT, INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7  # AttributeProto.AttributeType
_TENSOR_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(int(value))


def _len(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode("utf-8"))


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: float32 or int64 data as little-endian ``raw_data``."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _TENSOR_TYPES:
        raise TypeError(f"{name}: unsupported tensor dtype {array.dtype}")
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, _TENSOR_TYPES[array.dtype]) + _str(8, name) + _len(9, array.astype(array.dtype.newbyteorder("<")).tobytes())


def _attribute(name: str, value) -> bytes:
    if isinstance(value, float):
        return _str(1, name) + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, (bool, int)):
        return _str(1, name) + _int(3, int(value)) + _int(20, _ATTR_INT)
    if isinstance(value, str):
        return _str(1, name) + _str(4, value) + _int(20, _ATTR_STRING)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return _str(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)
    raise TypeError(f"attribute {name}: unsupported value {value!r}")


def node(op_type: str, inputs: list[str], outputs: list[str], name: str = "", **attributes) -> bytes:
    """NodeProto of the default (ai.onnx) domain; attributes are floats, ints, strings or lists of ints."""
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, name or outputs[0]) + _str(4, op_type)
    body += b"".join(_len(5, _attribute(k, v)) for k, v in attributes.items())
    return body


def value_info(name: str, shape: list[int | str]) -> bytes:
    """ValueInfoProto of a float32 tensor; a string dimension is symbolic (e.g. the batch size)."""
    dims = b"".join(_len(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, FLOAT) + _len(2, dims)
    return _str(1, name) + _len(2, _len(1, tensor_type))


def model(nodes: list[bytes], initializers: list[bytes], inputs: list[bytes], outputs: list[bytes],
          metadata: dict[str, str] | None = None, name: str = "graph") -> bytes:
    """Serialized ModelProto (IR ``IR_VERSION``, default opset ``OPSET``), ready for ``InferenceSession``."""
    graph = b"".join(_len(1, n) for n in nodes) + _str(2, name) + b"".join(_len(5, t) for t in initializers)
    graph += b"".join(_len(11, v) for v in inputs) + b"".join(_len(12, v) for v in outputs)
    out = _int(1, IR_VERSION) + _str(2, "monaiunetseg") + _len(7, graph) + _len(8, _str(1, "") + _int(2, OPSET))
    for key, value in (metadata or {}).items():
        out += _len(14, _str(1, key) + _str(2, value))
    return out
