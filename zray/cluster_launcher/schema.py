"""The JSON Schema of a cluster config: Ray's on-premise cluster YAML
(``provider: {type: local}``) plus zray's own keys.

Ray keys that make no sense without an autoscaler (``min_workers``,
``idle_timeout_minutes``, ...) are accepted so a Ray user's file loads;
``config.IGNORED_RAY_KEYS`` names them and ``zray up`` says they are ignored.
"""
from __future__ import annotations

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_RESOURCES = {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}}

#: what a node of one kind offers (zray's keys, under ``head_node`` / ``worker_nodes``)
NODE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "num_cpus": {"type": "number", "minimum": 0},
        "num_gpus": {"type": "number", "minimum": 0},
        "resources": _RESOURCES,
        "object_store_memory": {"type": "integer", "minimum": 1},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "zray cluster config",
    "type": "object",
    "additionalProperties": False,
    "required": ["cluster_name", "provider"],
    "properties": {
        "cluster_name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "provider": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "head_ip"],
            "properties": {
                "type": {"const": "local"},
                "head_ip": {"type": "string", "minLength": 1},
                "worker_ips": _STR_LIST,
                "coordinator_address": {"type": "string"},     # Ray: unsupported, refused
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ssh_user": {"type": "string", "minLength": 1},
                "ssh_private_key": {"type": "string"},
                "ssh_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                # zray: where host keys are remembered (new hosts are accepted once)
                "known_hosts_file": {"type": "string"},
            },
        },
        "file_mounts": {"type": "object", "additionalProperties": {"type": "string"}},
        "rsync_exclude": _STR_LIST,
        "initialization_commands": _STR_LIST,
        "setup_commands": _STR_LIST,
        "head_setup_commands": _STR_LIST,
        "worker_setup_commands": _STR_LIST,
        "head_start_ray_commands": _STR_LIST,
        "worker_start_ray_commands": _STR_LIST,
        # zray's own keys
        "python": {"type": "string", "minLength": 1},
        "venv": {"type": "string", "pattern": "^/"},
        "pip_install": {"type": "string", "minLength": 1},
        "temp_dir": {"type": "string", "pattern": "^/"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "systemd": {"type": "boolean"},
        "head_node": NODE,
        "worker_nodes": NODE,
        "dashboard": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            },
        },
        "gcs_storage": {"type": "string", "minLength": 1},
        "start_timeout_s": {"type": "number", "exclusiveMinimum": 0},
        # Ray's autoscaler keys: accepted, ignored (config.IGNORED_RAY_KEYS)
        "min_workers": {"type": "integer"},
        "max_workers": {"type": "integer"},
        "upscaling_speed": {"type": "number"},
        "idle_timeout_minutes": {"type": "number"},
        "docker": {"type": "object"},
        "cluster_synced_files": _STR_LIST,
        "file_mounts_sync_continuously": {"type": "boolean"},
        "rsync_filter": _STR_LIST,
        "head_node_type": {"type": "string"},
        "available_node_types": {"type": "object"},
    },
}
