"""Process plumbing: starting and stopping daemons (``node``, ``launcher``,
``daemon``), the session directory (``session``), the ``zray`` command line
(``cli``) and the microbenchmark behind ``zray microbenchmark``. Nothing here
is public API."""
