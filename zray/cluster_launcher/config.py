"""Loading a cluster config: YAML -> schema check -> :class:`ClusterConfig`.

:func:`load` raises :class:`ConfigError` (the CLI exits 2) whose message
names the offending key, its line in the file and what to do; nothing else
has happened yet, so a config that fails touches no host.
"""
from __future__ import annotations

import difflib
import os
import shlex
from dataclasses import dataclass, field

import jsonschema
import yaml

from .schema import SCHEMA

#: Ray autoscaler keys zray accepts and ignores (no autoscaler on bare metal)
IGNORED_RAY_KEYS = ("min_workers", "max_workers", "upscaling_speed", "idle_timeout_minutes",
                    "docker", "cluster_synced_files", "file_mounts_sync_continuously",
                    "rsync_filter", "head_node_type", "available_node_types")

DEFAULT_PORT = 6380
SYSTEMD_TEMP_DIR = "/var/lib/zray"


class ConfigError(ValueError):
    """A cluster config that cannot be used; the message says where and why."""


@dataclass
class NodeSpec:
    """What one kind of node offers (``head_node`` / ``worker_nodes``)."""
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict = field(default_factory=dict)
    object_store_memory: int | None = None


@dataclass
class ClusterConfig:
    """A validated cluster config with zray's defaults filled in."""
    path: str
    cluster_name: str
    head_ip: str
    worker_ips: list
    ssh_user: str
    ssh_private_key: str | None
    ssh_port: int
    known_hosts_file: str
    file_mounts: dict
    rsync_exclude: list
    initialization_commands: list
    setup_commands: list
    head_setup_commands: list
    worker_setup_commands: list
    head_start_commands: list          # empty: zray's defaults
    worker_start_commands: list
    python: str                        # interpreter on the hosts
    venv: str | None                   # a venv directory `zray up` may create
    pip_install: str
    temp_dir: str | None               # None: zray's default on each host
    port: int
    systemd: bool
    head_node: NodeSpec
    worker_nodes: NodeSpec
    dashboard: dict
    gcs_storage: str | None
    start_timeout_s: float
    ignored_keys: list

    @property
    def hosts(self) -> list:
        """Every host, the head first."""
        return [self.head_ip] + [ip for ip in self.worker_ips if ip != self.head_ip]

    @property
    def gcs_address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    def key_file(self) -> str:
        """Where each host keeps the cluster key (a shell word: may use $(id -u))."""
        return f"{self.temp_dir_word()}/cluster-{self.cluster_name}.key"

    def temp_dir_word(self) -> str:
        return shlex.quote(self.temp_dir) if self.temp_dir else '"/tmp/zray-$(id -u)"'


def load(path: str) -> ClusterConfig:
    """The config in ``path``, validated; raises :class:`ConfigError`."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(f"cannot read the cluster config {path}: "
                          f"{err.strerror or err}") from None
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> ClusterConfig:
    """The config in ``text`` (``path`` names it in messages)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a cluster config is a YAML mapping (cluster_name:, "
                          f"provider:, ...); see configs/cluster-onprem.yaml")
    lines = _key_lines(node)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    described = [_describe(e, lines) for e in validator.iter_errors(data)]
    if described:
        described.sort(key=lambda text: int(text.split(":")[0].split()[-1])
                       if text.split(":")[0].split()[-1].isdigit() else 0)
        raise ConfigError(f"{path}: the config does not fit the schema; nothing was done "
                          f"(fix these and run again):\n" + "\n".join(described[:10]))
    provider = data["provider"]
    if provider.get("coordinator_address"):
        raise ConfigError(f"{path}: line {lines.get(('provider', 'coordinator_address'), '?')}:"
                          f" provider.coordinator_address (Ray's coordinator server) is not "
                          f"supported; list the hosts in provider.worker_ips")
    systemd = bool(data.get("systemd", False))
    python, venv = _python(data)
    auth = data.get("auth", {})
    key = auth.get("ssh_private_key")
    if key:
        key = os.path.expanduser(key)
        if not os.path.isfile(key):
            raise ConfigError(f"{path}: line {lines.get(('auth', 'ssh_private_key'), '?')}: "
                              f"auth.ssh_private_key {key} does not exist; give the private "
                              f"key that logs in to the hosts")
    temp_dir = data.get("temp_dir") or (SYSTEMD_TEMP_DIR if systemd else None)
    if systemd and not python.startswith("/"):
        raise ConfigError(f"{path}: line {lines.get(('python',), '?')}: with systemd: true, "
                          f"python: must be an absolute path (systemd units run it)")
    return ClusterConfig(
        path=path, cluster_name=data["cluster_name"], head_ip=provider["head_ip"],
        worker_ips=list(provider.get("worker_ips", [])),
        ssh_user=auth.get("ssh_user") or os.environ.get("USER") or "root",
        ssh_private_key=key, ssh_port=auth.get("ssh_port", 22),
        known_hosts_file=os.path.expanduser(auth.get("known_hosts_file",
                                                     "~/.ssh/known_hosts")),
        file_mounts=dict(data.get("file_mounts", {})),
        rsync_exclude=list(data.get("rsync_exclude", [])),
        initialization_commands=list(data.get("initialization_commands", [])),
        setup_commands=list(data.get("setup_commands", [])),
        head_setup_commands=list(data.get("head_setup_commands", [])),
        worker_setup_commands=list(data.get("worker_setup_commands", [])),
        head_start_commands=list(data.get("head_start_ray_commands", [])),
        worker_start_commands=list(data.get("worker_start_ray_commands", [])),
        python=python, venv=venv, pip_install=data.get("pip_install", "zray"),
        temp_dir=temp_dir, port=data.get("port", DEFAULT_PORT), systemd=systemd,
        head_node=NodeSpec(**data.get("head_node", {})),
        worker_nodes=NodeSpec(**data.get("worker_nodes", {})),
        dashboard=dict(data.get("dashboard", {})), gcs_storage=data.get("gcs_storage"),
        start_timeout_s=float(data.get("start_timeout_s", 60)),
        ignored_keys=[k for k in IGNORED_RAY_KEYS if k in data])


def _python(data: dict) -> tuple[str, str | None]:
    """(interpreter on the hosts, venv directory or None): ``venv:`` names a
    virtualenv `zray up` creates when zray does not import (python defaults to
    its bin/python); ``python:`` alone names an interpreter used as is."""
    venv = data.get("venv")
    if venv:
        venv = venv.rstrip("/")
        return data.get("python", f"{venv}/bin/python"), venv
    return data.get("python", "python3"), None


def _key_lines(node, path=()) -> dict:
    """{key path (tuple): line number (1-based)} of every key in the YAML."""
    out = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            out[sub] = key.start_mark.line + 1
            out.update(_key_lines(value, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            out.update(_key_lines(item, path + (i,)))
    return out


def _describe(error: jsonschema.ValidationError, lines: dict) -> str:
    """One line for a schema error: the key, its line, what is wrong."""
    where = tuple(error.absolute_path)
    name = ".".join(map(str, where)) or "(top level)"
    line = lines.get(where)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        parts = []
        for key in unknown:
            full = ".".join(map(str, where + (key,)))
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (f"did you mean {close[0]!r}?" if close else
                    f"known keys here: {', '.join(sorted(allowed))}")
            parts.append(f"  line {lines.get(where + (key,), '?')}: unknown key {full!r}; "
                         + hint)
        return "\n".join(parts)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        at = f"line {line}" if line else "line 1"
        return (f"  {at}: {name} is missing the required key(s) {', '.join(missing)}")
    if error.validator == "type":
        return (f"  line {line or '?'}: {name} must be of type {error.validator_value}, "
                f"got {type(error.instance).__name__} {error.instance!r}")
    return f"  line {line or '?'}: {name}: {error.message}"
