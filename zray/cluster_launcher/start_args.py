"""The ``zray start`` arguments of a head and of a worker, from the config
(shared by the nohup path and the systemd units)."""
from __future__ import annotations

import json

from .config import ClusterConfig, NodeSpec


def _node_args(spec: NodeSpec) -> list[str]:
    args = []
    if spec.num_cpus is not None:
        args += ["--num-cpus", f"{spec.num_cpus:g}"]
    if spec.num_gpus is not None:
        args += ["--num-gpus", f"{spec.num_gpus:g}"]
    if spec.resources:
        args += ["--resources", json.dumps(spec.resources, sort_keys=True)]
    if spec.object_store_memory is not None:
        args += ["--object-store-memory", str(spec.object_store_memory)]
    return args


def head_args(cfg: ClusterConfig, key_file: str | None = None) -> list[str]:
    """Arguments after ``zray start`` for the head (``--cluster-key-file``
    only when ``key_file`` is given: the bootstrap script adds its own)."""
    args = ["--head", "--port", str(cfg.port), "--node-ip-address", cfg.head_ip]
    if key_file:
        args += ["--cluster-key-file", key_file]
    dash = cfg.dashboard
    if dash.get("enabled") is False:
        args += ["--include-dashboard", "false"]
    if dash.get("host"):
        args += ["--dashboard-host", dash["host"]]
    if dash.get("port"):
        args += ["--dashboard-port", str(dash["port"])]
    return args + _node_args(cfg.head_node)


def worker_args(cfg: ClusterConfig, ip: str, key_file: str | None = None) -> list[str]:
    """Arguments after ``zray start`` for the worker at ``ip``."""
    args = [f"--address={cfg.gcs_address}", "--node-ip-address", ip]
    if key_file:
        args += ["--cluster-key-file", key_file]
    return args + _node_args(cfg.worker_nodes)
