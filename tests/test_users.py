"""Many users on one host: each user's sessions live in a directory of their
own, and no driver follows a pointer file or reads a key file that another
user could have planted.

The attacks are replayed by making the planted files belong to another uid
(``nobody``), which needs root to ``chown``; elsewhere these tests skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from zray.broker import security
from zray.config import Config

OTHER_UID = 65534      # nobody

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")


def _run_driver(temp_dir: str, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZRAY_ADDRESS", "RAY_ADDRESS", security.ENV_KEY, security.ENV_KEY_FILE)}
    env["ZRAY_TEMP_DIR"] = temp_dir
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_default_temp_dir_is_per_user():
    environ = {k: v for k, v in os.environ.items() if k != "ZRAY_TEMP_DIR"}
    assert Config.from_env(environ).temp_dir == f"/tmp/zray-{os.getuid()}"


@needs_root
def test_init_refuses_a_temp_dir_of_another_user(tmp_path):
    planted = tmp_path / "sessions"
    planted.mkdir(mode=0o755)
    os.chown(planted, OTHER_UID, OTHER_UID)
    out = _run_driver(str(planted), """
        import zray
        try:
            zray.init(num_cpus=1)
        except PermissionError as err:
            print("REFUSED", type(err).__name__, err)
        else:
            zray.shutdown()
            print("STARTED")
    """)
    assert "REFUSED UnsafePathError" in out.stdout, out.stdout + out.stderr
    assert f"uid {OTHER_UID}" in out.stdout and "ZRAY_TEMP_DIR" in out.stdout
    assert not [p for p in os.listdir(planted) if p.startswith("session_")]


def _auto_driver(temp_dir) -> subprocess.CompletedProcess:
    """A driver connecting with ``address="auto"``; prints REFUSED and the
    reason when zray refuses."""
    return _run_driver(str(temp_dir), """
        import zray
        try:
            zray.init(address="auto")
        except PermissionError as err:
            print("REFUSED", err)
    """)


def _plant_pointer(temp_dir, session_dir, owner: int, mode: int) -> None:
    pointer = temp_dir / "current_cluster"
    pointer.write_text(f'{{"gcs_address": "127.0.0.1:1", "session_dir": "{session_dir}"}}')
    os.chmod(pointer, mode)
    os.chown(pointer, owner, owner)


@needs_root
def test_address_auto_refuses_a_pointer_file_of_another_user(tmp_path):
    temp_dir = tmp_path / "mine"
    temp_dir.mkdir(mode=0o700)
    _plant_pointer(temp_dir, tmp_path / "theirs", OTHER_UID, 0o644)
    out = _auto_driver(temp_dir)
    assert "REFUSED refusing to follow" in out.stdout, out.stdout + out.stderr
    assert "current_cluster" in out.stdout and f"uid {OTHER_UID}" in out.stdout


def test_address_auto_refuses_a_pointer_file_others_may_write(tmp_path):
    temp_dir = tmp_path / "mine"
    temp_dir.mkdir(mode=0o700)
    _plant_pointer(temp_dir, tmp_path / "theirs", os.getuid(), 0o666)
    out = _auto_driver(temp_dir)
    assert "REFUSED refusing to follow" in out.stdout, out.stdout + out.stderr
    assert "writable by other users" in out.stdout


@needs_root
def test_cluster_key_file_of_another_user_is_never_read(tmp_path):
    key_file = security.create_key_file(str(tmp_path / "cluster.key"))
    os.chown(key_file, OTHER_UID, OTHER_UID)
    with pytest.raises(security.ClusterKeyError, match=f"uid {OTHER_UID}"):
        security.load_key_file(key_file)


def test_cluster_key_file_others_may_write_is_never_read(tmp_path):
    key_file = security.create_key_file(str(tmp_path / "cluster.key"))
    os.chmod(key_file, 0o622)
    with pytest.raises(security.ClusterKeyError, match="writable by other users"):
        security.load_key_file(key_file)


@needs_root
def test_driver_never_joins_a_cluster_another_user_started(tmp_path):
    """The reported attack: user A's cluster recorded in a shared temp dir;
    user B's ``address="auto"`` driver must not connect to it and run code
    there with A's key."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    theirs = shared / "session_x"
    theirs.mkdir(mode=0o700)
    security.create_key_file(security.key_file_in(str(theirs)))
    for path in (shared, theirs, security.key_file_in(str(theirs))):
        os.chown(path, OTHER_UID, OTHER_UID)
    _plant_pointer(shared, theirs, OTHER_UID, 0o644)
    out = _run_driver(str(shared), """
        import zray
        try:
            zray.init(address="auto")
        except (PermissionError, ConnectionError) as err:
            print("REFUSED", type(err).__name__, err)
    """)
    assert "REFUSED UnsafePathError" in out.stdout, out.stdout + out.stderr

