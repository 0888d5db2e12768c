"""zray.store: the plasma-like per-node shared-memory object store.

Deals only in object ids (bytes), byte ranges and client ids (any hashable);
knows nothing of sockets, the GCS, the raylet or workers.
"""

from .allocator import Allocator
from .arena import Arena, arena_path
from .object_table import ObjectExistsError, ObjectStore, ObjectStoreFullError
from .spill_file import read_spill_file

__all__ = ["Arena", "arena_path", "Allocator", "ObjectStore",
           "ObjectStoreFullError", "ObjectExistsError", "read_spill_file"]
