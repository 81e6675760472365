"""ONNX Runtime's own model format (``.ort``): a flatbuffer, read into graphs of nodes and initializers.

Our own reader, as for CTranslate2 (:mod:`~.ct2`): the format's generated Python classes ship only inside
onnxruntime's private ``tools`` folder, and a pack converter should need no runtime. Only what a model's
graph needs is read: nodes (with attributes and subgraphs) and initializers.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np



class _Table:
    """One flatbuffer table; a field is found through the table's vtable by its slot (0, 1, 2, ...)."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def _u32(self, at: int) -> int:
        return struct.unpack_from("<I", self.buf, at)[0]

    def _field(self, slot: int) -> int:
        vtable = self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]
        entry = 4 + 2 * slot
        if entry >= struct.unpack_from("<H", self.buf, vtable)[0]:
            return 0  # written by an older schema: the field is absent
        rel = struct.unpack_from("<H", self.buf, vtable + entry)[0]
        return self.pos + rel if rel else 0

    def scalar(self, slot: int, fmt: str, default: Any = 0) -> Any:
        at = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _target(self, slot: int) -> int | None:
        at = self._field(slot)
        return at + self._u32(at) if at else None

    def table(self, slot: int) -> _Table | None:
        at = self._target(slot)
        return None if at is None else _Table(self.buf, at)

    def _vector(self, slot: int) -> tuple[int, int]:
        """(offset of the first element, element count); (0, 0) when absent."""
        at = self._target(slot)
        if at is None:
            return 0, 0
        return at + 4, self._u32(at)

    def _string_at(self, at: int) -> str:
        n = self._u32(at)
        if at + 4 + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        return bytes(self.buf[at + 4:at + 4 + n]).decode("utf-8")

    def string(self, slot: int) -> str:
        at = self._target(slot)
        return "" if at is None else self._string_at(at)

    def strings(self, slot: int) -> list[str]:
        start, n = self._vector(slot)
        return [self._string_at(start + 4 * i + self._u32(start + 4 * i)) for i in range(n)]

    def tables(self, slot: int) -> list[_Table]:
        start, n = self._vector(slot)
        return [_Table(self.buf, start + 4 * i + self._u32(start + 4 * i)) for i in range(n)]

    def array(self, slot: int, dtype: str) -> np.ndarray:
        start, n = self._vector(slot)
        if start + n * np.dtype(dtype).itemsize > len(self.buf):
            raise ValueError("vector runs past the end of the file")
        return np.frombuffer(self.buf, dtype=dtype, count=n, offset=start) if n else np.zeros(0, dtype)


# Slots of the ORT schema (onnxruntime/core/flatbuffers/schema/ort.fbs) that we read.
_SESSION_MODEL = 1
_MODEL_GRAPH = 7
_GRAPH_INITIALIZERS, _GRAPH_NODES, _GRAPH_INPUTS, _GRAPH_OUTPUTS, _GRAPH_SPARSE = 0, 2, 5, 6, 7
_NODE_NAME, _NODE_DOMAIN, _NODE_OP, _NODE_INPUTS, _NODE_OUTPUTS, _NODE_ATTRS = 0, 2, 5, 8, 9, 10
_ATTR_NAME, _ATTR_TYPE, _ATTR_F, _ATTR_I, _ATTR_S, _ATTR_T, _ATTR_G, _ATTR_FLOATS, _ATTR_INTS, _ATTR_STRINGS = (
    0, 2, 3, 4, 5, 6, 7, 8, 9, 10)
_TENSOR_NAME, _TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_RAW, _TENSOR_EXTERNAL = 0, 2, 3, 4, 6

# ONNX TensorProto data types.
_DTYPES = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?", 10: "<f2", 11: "<f8",
           12: "<u4", 13: "<u8"}
INT8 = (np.dtype("i1"), np.dtype("u1"))  # the quantised element types


@dataclass
class OrtNode:
    op: str
    name: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)  # a GRAPH attribute holds an OrtGraph


@dataclass
class OrtGraph:
    initializers: dict[str, np.ndarray]
    nodes: list[OrtNode]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def subgraphs(self) -> Iterator["OrtGraph"]:
        for node in self.nodes:
            for value in node.attrs.values():
                if isinstance(value, OrtGraph):
                    yield value
                    yield from value.subgraphs()

    def walk(self) -> Iterator[OrtNode]:
        """Every node, those of subgraphs (``If`` branches) included."""
        for graph in (self, *self.subgraphs()):
            yield from graph.nodes

    def all_initializers(self) -> Iterator[tuple[str, np.ndarray]]:
        for graph in (self, *self.subgraphs()):
            yield from graph.initializers.items()


def _tensor(t: _Table) -> tuple[str, np.ndarray]:
    name = t.string(_TENSOR_NAME)
    code = t.scalar(_TENSOR_TYPE, "i")
    if code not in _DTYPES:
        raise ValueError(f"tensor {name!r}: unsupported ONNX data type {code}")
    if t.scalar(_TENSOR_EXTERNAL, "q", -1) != -1:
        raise ValueError(f"tensor {name!r}: external data is not supported")
    dims = [int(d) for d in t.array(_TENSOR_DIMS, "<i8")]
    dtype = np.dtype(_DTYPES[code])
    count = math.prod(dims)
    start, nbytes = t._vector(_TENSOR_RAW)
    if nbytes != count * dtype.itemsize:
        raise ValueError(f"tensor {name!r}: {nbytes} bytes of data for shape {dims} of {dtype}")
    if count == 0:
        return name, np.zeros(dims, dtype)
    return name, np.frombuffer(t.buf, dtype=dtype, count=count, offset=start).reshape(dims).copy()


def _attribute(a: _Table) -> tuple[str, Any]:
    name, kind = a.string(_ATTR_NAME), a.scalar(_ATTR_TYPE, "i")
    if kind == 1:
        return name, a.scalar(_ATTR_F, "f", 0.0)
    if kind == 2:
        return name, a.scalar(_ATTR_I, "q", 0)
    if kind == 3:
        return name, a.string(_ATTR_S)
    if kind == 4:
        return name, _tensor(a.table(_ATTR_T))[1]
    if kind == 5:
        return name, _graph(a.table(_ATTR_G))
    if kind == 6:
        return name, a.array(_ATTR_FLOATS, "<f4").tolist()
    if kind == 7:
        return name, a.array(_ATTR_INTS, "<i8").tolist()
    if kind == 8:
        return name, a.strings(_ATTR_STRINGS)
    raise ValueError(f"attribute {name!r}: unsupported attribute type {kind}")


def _graph(g: _Table) -> OrtGraph:
    if g.tables(_GRAPH_SPARSE):
        raise ValueError("sparse initializers are not supported")
    nodes = [
        OrtNode(
            op=n.string(_NODE_OP), name=n.string(_NODE_NAME), domain=n.string(_NODE_DOMAIN),
            inputs=n.strings(_NODE_INPUTS), outputs=n.strings(_NODE_OUTPUTS),
            attrs=dict(_attribute(a) for a in n.tables(_NODE_ATTRS)),
        )
        for n in g.tables(_GRAPH_NODES)
    ]
    return OrtGraph(dict(_tensor(t) for t in g.tables(_GRAPH_INITIALIZERS)), nodes,
                    g.strings(_GRAPH_INPUTS), g.strings(_GRAPH_OUTPUTS))


def read_ort(data: bytes) -> OrtGraph:
    """The main graph of an ORT-format model file (nodes, initializers as numpy arrays, subgraphs)."""
    if len(data) < 8 or data[4:8] != b"ORTM":
        raise ValueError("not an ORT-format model (no ORTM file identifier)")
    buf = memoryview(data)
    try:
        session = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        model = session.table(_SESSION_MODEL)
        graph = model.table(_MODEL_GRAPH) if model is not None else None
        if graph is None:
            raise ValueError("ORT file has no model graph")
        return _graph(graph)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"truncated or corrupt ORT file: {e}") from e
