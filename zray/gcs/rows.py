"""GCS rows between a table and the managers: a row is a ``protocol``
record (``NodeRow``, ...) in the GCS and a plain msgpack-able dict in the
storage.

``Table`` keeps a table's rows decoded in memory (the GCS's truth while it
runs) and writes every change through ``storage.put`` in the dict form a
restarted GCS reloads. Its rows are deeply read-only (``freeze``): the
record is immutable and the dicts and lists inside raise TypeError when
changed, so a manager hands out the row itself and a caller can never alter
the table through it; a change is a new row (``row._replace(...)``) put
back through the table.

``load`` and ``stored`` convert and copy one row (a msgpack round trip, 3x
faster than ``copy.deepcopy``, which also checks that a row is storable).
"""
from __future__ import annotations

import msgpack


def _read_only(self, *args, **kwargs):
    raise TypeError(f"a GCS row's {type(self).__name__} is read-only: build a new row "
                    f"with row._replace(...) and put it through its manager")


class FrozenDict(dict):
    """A dict that refuses changes (it packs, compares and reads as a dict)."""
    __slots__ = ()
    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only
    __ior__ = _read_only

    def __reduce__(self):          # copy.deepcopy and pickle rebuild it whole
        return FrozenDict, (dict(self),)


class FrozenList(list):
    """A list that refuses changes (it packs, compares and reads as a list)."""
    __slots__ = ()
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = _read_only
    clear = sort = reverse = __iadd__ = __imul__ = _read_only

    def __reduce__(self):
        return FrozenList, (list(self),)


#: what needs no freezing nor copying (tested first: most fields are these)
_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def frozen(value):
    """``value`` with every dict and list inside made read-only (values
    frozen already are returned as they are, so a re-freeze is cheap)."""
    kind = type(value)
    if kind is dict:
        return FrozenDict({k: v if type(v) in _SCALARS else frozen(v)
                           for k, v in value.items()})
    if kind is list:
        return FrozenList([v if type(v) in _SCALARS else frozen(v) for v in value])
    return value


def plain(value):
    """A copy of ``value`` with plain dicts and lists (what a table stores)."""
    if isinstance(value, dict):
        return {k: v if type(v) in _SCALARS else plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _SCALARS else plain(v) for v in value]
    return value


def freeze(row):
    """The record ``row`` with its fields frozen (see ``frozen``)."""
    return row._make([v if type(v) in _SCALARS else frozen(v) for v in row])


class Table:
    """One table of typed rows (``record``, a protocol row class), decoded
    once: at construction from what ``storage`` holds, then kept in memory.
    ``put`` writes the row's dict form through ``storage.put`` before the
    table changes; ``get`` and ``rows`` return the read-only rows themselves."""

    def __init__(self, storage, name: str, record):
        self.storage = storage
        self.name = name
        self.record = record
        self._rows: dict = {}       # key -> the frozen row
        self._stored: dict = {}     # key -> the plain dict last put (never changed)
        for key, data in storage.items(name):
            row = record.from_storage(data)
            self._rows[key] = freeze(row)
            self._stored[key] = plain(row.to_storage())    # keeps nothing storage gave

    def get(self, key):
        """The row stored under ``key``, or None."""
        return self._rows.get(key)

    def put(self, key, row):
        """Store ``row`` under ``key`` (written through, as a plain dict that
        shares nothing with a row); returns the stored, frozen row. Fields
        equal to those of the row stored now (kept by ``_replace``, or a
        report that repeats itself) are neither frozen nor copied again."""
        old = self._rows.get(key)
        values, data = [], {}
        was = self._stored[key] if old is not None else None
        for name, value, kept in zip(row._fields, row, old or row):
            if type(value) in _SCALARS:
                values.append(value)
                data[name] = value
            elif was is not None and (value is kept or value == kept):
                values.append(kept)         # unchanged (a heartbeat's totals): shared as is
                data[name] = was[name]
            else:
                values.append(frozen(value))
                data[name] = plain(value)
        self.storage.put(self.name, key, data)
        row = self._rows[key] = row._make(values)
        self._stored[key] = data
        return row

    def delete(self, key) -> None:
        self.storage.delete(self.name, key)
        self._rows.pop(key, None)
        self._stored.pop(key, None)

    def rows(self) -> list:
        """Every row, in the order they were first stored."""
        return list(self._rows.values())

    def keys(self) -> list:
        return list(self._rows)


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
