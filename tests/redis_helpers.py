"""A real ``redis-server`` on a free loopback port, for the GCS's Redis tests.

Under ``CI=true`` a missing ``redis-server`` fails the test instead of
skipping it (``.ci/install-test-tools`` installs Debian's package)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import wait_for


def need_redis_server() -> str:
    """Path of redis-server and the redis package, or skip/fail the test."""
    missing = []
    path = shutil.which("redis-server")
    if path is None:
        missing.append("redis-server (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis package (pip install -e .)")
    if missing:
        message = f"cannot test the Redis backend: missing {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server --port P --save '' --appendonly no`` on loopback; stop()
    ends it by pid and removes its directory."""

    def __init__(self):
        binary = need_redis_server()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="zray-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

        def answers():
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            try:
                return client.ping()
            except redis.ConnectionError:
                return False
        try:
            wait_for(answers, timeout=10)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
