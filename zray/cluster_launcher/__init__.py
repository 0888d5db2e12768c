"""Bare-metal clusters from one YAML file: ``zray up/down/exec/submit/attach``.

Ray's on-premise cluster YAML (``provider: {type: local}``), validated by a
JSON Schema before any host is touched, then applied over the system
``ssh``/``rsync`` to every host in parallel. Modules, one job each:

* ``schema``   -- the JSON Schema of a cluster config;
* ``config``   -- loading, validating (errors name the key and its line), defaults;
* ``ssh``      -- running commands and rsync on a host (BatchMode, ControlMaster);
* ``start_args``-- the ``zray start`` arguments of the head and the workers;
* ``units``    -- systemd units generated from the config;
* ``bootstrap``-- the per-host steps of ``zray up``/``down`` (through scripts/zray-bootstrap.sh);
* ``progress`` -- the live per-host progress display;
* ``commands`` -- the commands themselves; ``cli`` registers them with ``zray``.
"""
