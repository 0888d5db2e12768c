"""Cluster configs (issue 12), without hosts: the schema and its messages, the
examples in configs/, the generated systemd units, the ``zray start``
arguments, and that the cluster key travels only on stdin."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from zray.cluster_launcher import bootstrap, commands, config, units
from zray.cluster_launcher.ssh import Result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RAY_LOCAL = textwrap.dedent("""\
    cluster_name: default
    provider:
        type: local
        head_ip: 10.1.0.1
        worker_ips: [10.1.0.2, 10.1.0.3]
    auth:
        ssh_user: ubuntu
    min_workers: 2
    max_workers: 2
    upscaling_speed: 1.0
    idle_timeout_minutes: 5
    file_mounts: {}
    cluster_synced_files: []
    file_mounts_sync_continuously: False
    rsync_exclude: ["**/.git"]
    rsync_filter: [".gitignore"]
    initialization_commands: []
    setup_commands: []
    head_setup_commands: []
    worker_setup_commands: []
    head_start_ray_commands:
        - zray stop
        - zray start --head --port=6380 --cluster-key-file=$ZRAY_CLUSTER_KEY_FILE
    worker_start_ray_commands:
        - zray stop
        - zray start --address=$RAY_HEAD_IP:6380 --cluster-key-file=$ZRAY_CLUSTER_KEY_FILE
    """)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME with the ~/.ssh/id_ed25519 the example configs name."""
    os.makedirs(tmp_path / ".ssh")
    (tmp_path / ".ssh" / "id_ed25519").write_text("not a real key\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _error(text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, "c.yaml")
    return str(info.value)


def test_a_ray_local_cluster_yaml_loads_and_autoscaler_keys_are_named_as_ignored():
    cfg = config.parse(RAY_LOCAL)
    assert cfg.hosts == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    assert cfg.gcs_address == "10.1.0.1:6380" and cfg.ssh_user == "ubuntu"
    assert len(cfg.head_start_commands) == 2 and cfg.systemd is False
    assert set(cfg.ignored_keys) == {"min_workers", "max_workers", "upscaling_speed",
                                     "idle_timeout_minutes", "cluster_synced_files",
                                     "file_mounts_sync_continuously", "rsync_filter"}


def test_the_example_configs_are_valid(home):
    onprem = config.load(os.path.join(REPO, "configs", "cluster-onprem.yaml"))
    assert onprem.systemd and onprem.venv == "/opt/zray-venv"
    assert onprem.python == "/opt/zray-venv/bin/python"
    assert onprem.temp_dir == config.SYSTEMD_TEMP_DIR
    single = config.load(os.path.join(REPO, "configs", "cluster-single-machine.yaml"))
    assert single.hosts == ["127.0.0.1"] and not single.systemd


def test_unknown_key_is_named_with_its_line_and_a_suggestion():
    text = RAY_LOCAL.replace("auth:\n    ssh_user: ubuntu",
                             "auth:\n    ssh_user: ubuntu\n    ssh_privat_key: k")
    message = _error(text)
    assert "line 8: unknown key 'auth.ssh_privat_key'; did you mean 'ssh_private_key'?" \
        in message, message
    assert "nothing was done" in message


def test_wrong_type_and_missing_field_are_named():
    message = _error(RAY_LOCAL.replace("max_workers: 2", "max_workers: two"))
    assert "line 9: max_workers must be of type integer, got str 'two'" in message, message
    message = _error("cluster_name: x\nprovider:\n  type: local\n")
    assert "line 2: provider is missing the required key(s) head_ip" in message, message
    assert "provider" in _error("cluster_name: x\n")
    assert "YAML mapping" in _error("- a list\n")
    assert "not valid YAML" in _error("cluster_name: [\n")


def test_cli_exits_2_on_a_bad_config_and_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(RAY_LOCAL.replace("type: local", "type: aws"))
    out = subprocess.run([sys.executable, "-m", "zray._private.cli", "up", str(path), "-y"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "line 3: provider.type" in out.stderr and "'local' was expected" in out.stderr, \
        out.stderr


def test_systemd_needs_an_absolute_python():
    message = _error(RAY_LOCAL + "systemd: true\npython: python3\n")
    assert "absolute path" in message


def _systemd_config(tmp_path, extra: str = ""):
    text = textwrap.dedent(f"""\
        cluster_name: unit-test
        provider: {{type: local, head_ip: 10.2.0.1, worker_ips: [10.2.0.2]}}
        auth: {{ssh_user: zray}}
        python: {sys.executable}
        systemd: true
        gcs_storage: sqlite://
        head_node: {{num_cpus: 2, resources: {{"disk": 2, "100%": 1}}}}
        worker_nodes: {{num_gpus: 1, object_store_memory: 100000000}}
        dashboard: {{host: 0.0.0.0, port: 8266}}
        """) + extra
    return config.parse(text)


def test_generated_units_carry_the_config_and_pass_systemd_analyze_verify(tmp_path):
    cfg = _systemd_config(tmp_path)
    head, worker = units.head_unit(cfg), units.worker_unit(cfg, "10.2.0.2")
    key = "/var/lib/zray/cluster-unit-test.key"
    assert f"--cluster-key-file {key}" in head and f"--cluster-key-file {key}" in worker
    assert "--head --port 6380 --node-ip-address 10.2.0.1" in head
    assert "--address=10.2.0.1:6380 --node-ip-address 10.2.0.2" in worker
    assert "--num-gpus 1" in worker and "--object-store-memory 100000000" in worker
    assert '"{\\"100%%\\": 1, \\"disk\\": 2}"' in head           # JSON, systemd-quoted
    assert "Environment=ZRAY_GCS_STORAGE=sqlite://" in head
    assert "ZRAY_GCS_STORAGE" not in worker
    for text in (head, worker):
        assert "Restart=on-failure" in text and "Environment=ZRAY_TEMP_DIR=/var/lib/zray" \
            in text and "User=zray" in text and text.rstrip().endswith(
                "WantedBy=multi-user.target")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing")
    paths = []
    for name, text in ((units.HEAD_UNIT, head), (units.WORKER_UNIT, worker)):
        path = tmp_path / name
        path.write_text(text.replace("User=zray", "User=root"))   # a user that exists here
        paths.append(str(path))
    out = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


class FakeRemote:
    """Records what would run on a host: command lines and stdin."""

    def __init__(self):
        self.calls = []

    def run(self, command, *, input=None, timeout=600, capture=True, tty=False):
        self.calls.append((command, input))
        if "read-key" in command:
            return Result(3, "", "")
        if " nodes " in command:
            return Result(4, "", "nothing listens")
        return Result(0, "", "")

    def connect(self):
        pass


def test_the_cluster_key_travels_on_stdin_never_on_a_command_line(tmp_path):
    cfg = config.parse(RAY_LOCAL.split("head_start_ray_commands")[0])   # zray's start
    up = commands._Up(cfg, restart_only=False, no_restart=False)
    remotes = {}

    def session(cfg_, host):
        node = bootstrap.HostSession(cfg_, host)
        node.remote = remotes.setdefault(host, FakeRemote())
        return node

    up.progress.stream = open(os.devnull, "w")
    original = commands.HostSession
    commands.HostSession = session
    try:
        up._host(cfg.head_ip)
        up._host(cfg.worker_ips[0])
    finally:
        commands.HostSession = original
        up.progress.stream.close()
    assert not up.failures, up.failures
    secret = up.key.split(b"secret: ")[1].strip().decode()
    assert len(secret) == 40
    for host, remote in remotes.items():
        writes = [inp for cmd, inp in remote.calls if "write-key" in cmd]
        assert writes and all(secret.encode() in w for w in writes), (host, remote.calls)
        for cmd, _ in remote.calls:
            assert secret not in cmd, cmd
    assert up.outcome == {cfg.head_ip: "started", cfg.worker_ips[0]: "started"}


def test_zray_start_args_of_head_and_worker():
    from zray.cluster_launcher.start_args import head_args, worker_args
    cfg = config.parse(RAY_LOCAL.replace("min_workers: 2", "port: 7000\nworker_nodes: "
                                         "{num_cpus: 3, resources: {a: 1}}\n"
                                         "dashboard: {enabled: false}"))
    assert head_args(cfg) == ["--head", "--port", "7000", "--node-ip-address", "10.1.0.1",
                              "--include-dashboard", "false"]
    assert worker_args(cfg, "10.1.0.3") == ["--address=10.1.0.1:7000", "--node-ip-address",
                                            "10.1.0.3", "--num-cpus", "3", "--resources",
                                            '{"a": 1}']


def test_bootstrap_script_is_plain_posix_sh():
    script = os.path.join(REPO, "scripts", "zray-bootstrap.sh")
    assert os.path.realpath(script) == os.path.realpath(bootstrap.SCRIPT)
    out = subprocess.run(["sh", "-n", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(["sh", script, "frobnicate"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and "unknown command frobnicate" in out.stderr


def test_bootstrap_script_keeps_the_key_private(tmp_path):
    key = tmp_path / "t" / "cluster.key"
    env = {**os.environ, "ZRAY_TEMP_DIR": str(tmp_path / "t"), "ZRAY_CLUSTER_KEY_FILE": str(key),
           "ZRAY_PYTHON": sys.executable}
    out = subprocess.run(["sh", bootstrap.SCRIPT, "write-key"], input="secret: abc\n",
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert oct(os.stat(key.parent).st_mode & 0o777) == "0o700"
    read = subprocess.run(["sh", bootstrap.SCRIPT, "read-key"], capture_output=True, text=True,
                          env=env, timeout=30)
    assert read.stdout == "secret: abc\n"
    os.unlink(key)
    assert subprocess.run(["sh", bootstrap.SCRIPT, "read-key"], env=env,
                          timeout=30).returncode == 3
