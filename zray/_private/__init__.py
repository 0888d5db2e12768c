"""zray's internals that are not a daemon of their own: process plumbing
(``node``, ``launcher``, ``daemon``, ``session``, ``pids``), the cluster key
lookup, the resource-fit check the GCS and raylets share, the ``zray``
command line (``cli``) and the microbenchmark behind ``zray microbenchmark``.
Nothing here is public API."""
