"""`zray stop` ends a supervised head (its GCS killed once before) and leaves
nothing. A module of its own: `zray stop` ends every zray process of the
user, so it must run when no other module's cluster is up (tests/
test_gcs_restart.py keeps one for all its tests)."""
from __future__ import annotations

import time

import pytest

import zray
from zray._private.node import command_line, zray_processes

from test_gcs_restart import Head, zray_cli


def test_zray_stop_ends_the_supervised_head_and_leaves_nothing():
    if zray.is_initialized():
        zray.shutdown()
    deadline = time.monotonic() + 10        # the previous test's processes may still be exiting
    while (others := zray_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if others:
        pytest.skip(f"`zray stop` would kill {len(others)} zray process(es) this test did "
                    f"not start: {[' '.join(command_line(p))[:160] for p in others[:3]]}")
    cluster = Head()
    try:
        old = cluster.kill_gcs()
        cluster.wait_gcs_back(old)
        out = zray_cli(cluster.env, "stop")
        assert out.returncode == 0, out.stderr
        cluster.assert_nothing_left()
    finally:
        cluster.stop()
