"""The core worker of this process (a driver's or a worker's), once connected."""
from __future__ import annotations

worker = None


def require_worker():
    if worker is None:
        from ..exceptions import RaySystemError
        raise RaySystemError(
            "zray is not initialized in this process: call zray.init() first")
    return worker
