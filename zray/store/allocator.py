"""First-fit allocator over one contiguous range of bytes.

Blocks are carved from the lowest free offset that fits, so freed (already
touched, warm) pages are reused before fresh ones. Neighbouring free blocks
coalesce on free. Offsets and block sizes are multiples of ``alignment``.
"""

from __future__ import annotations

from bisect import bisect_left


class Allocator:
    """Hands out byte ranges of ``[0, capacity)``; knows each block's size."""

    def __init__(self, capacity: int, alignment: int = 64):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError("alignment must be a power of two")
        self.capacity = capacity
        self.alignment = alignment
        self.used = 0
        # Free blocks, sorted by offset, never adjacent (always coalesced).
        self._free_off: list[int] = [0] if capacity else []
        self._free_size: list[int] = [capacity] if capacity else []
        self._blocks: dict[int, int] = {}  # offset -> allocated (rounded) size

    def block_size(self, size: int) -> int:
        """The bytes a request for ``size`` takes (rounded up to alignment)."""
        a = self.alignment
        return (max(size, 1) + a - 1) & ~(a - 1)

    def allocate(self, size: int) -> int | None:
        """Offset of a new block of at least ``size`` bytes, or None if no
        free block is big enough. Size 0 still gets a distinct block."""
        if size < 0:
            raise ValueError("size must be >= 0")
        need = self.block_size(size)
        sizes = self._free_size
        for i, free in enumerate(sizes):
            if free >= need:
                off = self._free_off[i]
                if free == need:
                    del self._free_off[i]
                    del sizes[i]
                else:
                    self._free_off[i] = off + need
                    sizes[i] = free - need
                self._blocks[off] = need
                self.used += need
                return off
        return None

    def free(self, offset: int) -> None:
        """Return the block at ``offset``; KeyError if none was allocated there."""
        size = self._blocks.pop(offset)
        self.used -= size
        offs, sizes = self._free_off, self._free_size
        i = bisect_left(offs, offset)
        end = offset + size
        merge_next = i < len(offs) and offs[i] == end
        merge_prev = i > 0 and offs[i - 1] + sizes[i - 1] == offset
        if merge_prev and merge_next:
            sizes[i - 1] += size + sizes[i]
            del offs[i]
            del sizes[i]
        elif merge_prev:
            sizes[i - 1] += size
        elif merge_next:
            offs[i] = offset
            sizes[i] += size
        else:
            offs.insert(i, offset)
            sizes.insert(i, size)

    def size_of(self, offset: int) -> int:
        """The (rounded) size of the allocated block at ``offset``."""
        return self._blocks[offset]

    def largest_free(self) -> int:
        """Size of the biggest free block (0 when full)."""
        return max(self._free_size, default=0)

    @property
    def free_bytes(self) -> int:
        return self.capacity - self.used

    def __repr__(self) -> str:
        return (f"Allocator(capacity={self.capacity}, used={self.used}, "
                f"free_blocks={len(self._free_off)})")
