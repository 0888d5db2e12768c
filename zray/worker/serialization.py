"""User values to bytes and back: pickle protocol 5 with out-of-band buffers.

A serialized value is one contiguous layout, the same inside a message and in
the object store::

    header  <4sB3xIQ>  magic, kind, number of buffers, length of the pickle
    lengths <Q> * nbufs
    pickle  (in-band bytes)
    buffers each starting at a 64-byte aligned offset

Deserializing from a store view is zero-copy: numpy arrays point into it.
``ObjectRef``s met while pickling are collected (they are *contained* in the
value and must stay alive with it).
"""
from __future__ import annotations

import pickle
import struct
import threading

import cloudpickle

MAGIC = b"ZRY1"
KIND_VALUE = 0
KIND_ERROR = 1

_HEADER = struct.Struct("<4sB3xIQ")
_ALIGN = 64
_SIMPLE = (int, float, str, bytes, bool, type(None))

_local = threading.local()


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


class Serialized:
    """A value ready to travel: chunks to write, its size, the refs it holds."""
    __slots__ = ("kind", "inband", "buffers", "contained_refs", "size", "_layout")

    def __init__(self, kind: int, inband: bytes, buffers: list, contained_refs: list):
        self.kind = kind
        self.inband = inband
        self.buffers = buffers
        self.contained_refs = contained_refs
        lengths = [memoryview(b).nbytes for b in buffers]
        head = _HEADER.size + 8 * len(buffers)
        pos = head + len(inband)
        layout = []
        for n in lengths:
            start = _align(pos) if n else pos
            layout.append((start - pos, n))
            pos = start + n
        self._layout = (head, lengths, layout)
        self.size = pos

    def chunks(self) -> list:
        """Buffers which, written back to back, give the layout above."""
        head, lengths, layout = self._layout
        out = [_HEADER.pack(MAGIC, self.kind, len(lengths), len(self.inband))
               + struct.pack(f"<{len(lengths)}Q", *lengths), self.inband]
        for buf, (pad, _) in zip(self.buffers, layout):
            if pad:
                out.append(bytes(pad))
            out.append(buf.raw() if isinstance(buf, pickle.PickleBuffer) else buf)
        return out

    def to_bytes(self) -> bytes:
        if not self.buffers:
            head = _HEADER.pack(MAGIC, self.kind, 0, len(self.inband))
            return head + self.inband
        return b"".join(memoryview(c).cast("B") if not isinstance(c, bytes) else c
                        for c in self.chunks())


def _is_ndarray(cls) -> bool:
    """Whether ``cls`` is numpy's ndarray (read by name: this module does not
    import numpy, so a worker that never meets an array never loads it)."""
    return cls.__name__ == "ndarray" and cls.__module__ == "numpy"


def collecting_refs():
    """The list ObjectRef.__reduce__ appends to while this thread pickles."""
    return getattr(_local, "refs", None)


def serialize(value, kind: int = KIND_VALUE) -> Serialized:
    """Serialize ``value``; raises TypeError naming it when it cannot be pickled."""
    if type(value) in _SIMPLE:
        return Serialized(kind, pickle.dumps(value, 5), [], [])
    if _is_ndarray(type(value)) and not value.dtype.hasobject:
        # a plain array holds no code and no refs: the C pickler is enough
        # (cloudpickle looks up numpy's reconstructors module by module)
        buffers: list = []
        inband = pickle.dumps(value, 5, buffer_callback=buffers.append)
        return Serialized(kind, inband, buffers, [])
    buffers: list = []
    refs: list = []
    outer = getattr(_local, "refs", None)
    _local.refs = refs
    try:
        inband = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize {_describe(value)}: {type(exc).__name__}: {exc}") from exc
    finally:
        _local.refs = outer
    return Serialized(kind, inband, buffers, refs)


def error_bytes(error: BaseException) -> bytes:
    """``error`` as the bytes of a RET_ERROR value (what ``get`` raises).
    Raises TypeError if ``error`` cannot be pickled."""
    return serialize(error, KIND_ERROR).to_bytes()


def _describe(value) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def deserialize(data):
    """``(kind, value)`` from a serialized layout (bytes or a buffer view)."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    magic, kind, nbufs, inband_len = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("not a zray serialized value")
    pos = _HEADER.size
    lengths = struct.unpack_from(f"<{nbufs}Q", view, pos) if nbufs else ()
    pos += 8 * nbufs
    inband = view[pos:pos + inband_len]
    pos += inband_len
    buffers = []
    for n in lengths:
        if n:
            pos = _align(pos)
        buffers.append(view[pos:pos + n])
        pos += n
    return kind, pickle.loads(inband, buffers=buffers)
