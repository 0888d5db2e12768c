"""zray: a distributed computing runtime for Python in the shape of Ray,
on a ZeroMQ message bus. ``import zray as ray`` runs typical Ray code.

The names below load on first use, so daemons (``python -m zray.gcs``) start
without importing the whole client API.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "available_resources": "api", "cancel": "api", "cluster_resources": "api", "get": "api",
    "get_runtime_context": "api", "init": "api", "is_initialized": "api", "nodes": "api",
    "put": "api", "remote": "api", "shutdown": "api", "wait": "api",
    "timeline": "util.timeline",
    "kill": "actor", "get_actor": "actor", "method": "actor",
    "ObjectRef": "object_ref", "ObjectRefGenerator": "object_ref",
    "DynamicObjectRefGenerator": "object_ref",
    "exceptions": None, "util": None, "actor": None, "cluster_utils": None,
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name, "missing")
    if module == "missing":
        raise AttributeError(f"module 'zray' has no attribute {name!r}")
    if module is None:
        value = importlib.import_module(f"zray.{name}")
    else:
        value = getattr(importlib.import_module(f"zray.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
