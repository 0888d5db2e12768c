"""Reading a spilled object straight from its spill file.

When the store is too full of pinned objects to restore a spilled object
into the arena, a reader on the same node can still read it from the file
the object table wrote (see ``ObjectStore.spilled_copy``): into private
memory, not shared and not pinned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def read_spill_file(path: str, size: int) -> np.ndarray | None:
    """The ``size`` bytes of the spill file at ``path`` as a read-only uint8
    array, or None when the file is gone or not ``size`` bytes long (the
    object was restored, freed or spilled again meanwhile: ask the store
    again)."""
    import numpy as np
    out = np.empty(size, dtype=np.uint8)
    view = memoryview(out)
    try:
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < size:
                n = f.readinto(view[done:])
                if not n:
                    return None
                done += n
            if f.read(1):
                return None
    except FileNotFoundError:
        return None
    finally:
        view.release()
    out.flags.writeable = False
    return out
