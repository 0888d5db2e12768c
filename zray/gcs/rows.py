"""GCS rows between a table and the managers: a row is a ``protocol``
record (``NodeRow``, ...) in the GCS and a plain msgpack-able dict in the
storage. ``load`` and ``stored`` convert and copy, so a caller never shares
an object with the table; a msgpack round trip copies (3x faster than
``copy.deepcopy``) and checks that a row is storable: one that is not raises
TypeError at once.
"""
from __future__ import annotations

import msgpack


def copy_row(row):
    """A deep copy of ``row`` (None stays None); lists inside come back as lists."""
    if row is None:
        return None
    return msgpack.unpackb(msgpack.packb(row, use_bin_type=True), raw=False,
                           strict_map_key=False)


def load(record, data):
    """The stored dict ``data`` as a ``record`` (a protocol row class; None
    stays None), sharing nothing with the table."""
    return None if data is None else record.from_storage(copy_row(data))


def stored(row) -> dict:
    """``row`` as the dict a table stores, sharing nothing with ``row``."""
    return copy_row(row.to_storage())


def select(storage, table: str, record, keep=None) -> list:
    """Copies (as ``record``) of the rows of ``table`` that ``keep(row)``
    accepts (all when None); only those are copied."""
    if keep is None:
        return [load(record, data) for _, data in storage.items(table)]
    view = record.from_storage          # no copy: the test only reads
    return [load(record, data) for _, data in storage.items(table) if keep(view(data))]
