"""zray's dashboard: pages, Ray's Jobs and State APIs, Prometheus metrics.

``python -m zray.dashboard`` is the daemon (a supervisor restarting
``zray.dashboard.server``: the Flask app under gunicorn, a master and one
gthread worker). Modules: ``app`` (routes and the request guard),
``log_tail`` (job logs over a websocket, as Ray's clients tail them),
``auth`` (token, Host, Origin),
``token_file``, ``cluster_view`` (the live picture from the GCS event
stream), ``jobs`` (the job supervisor), ``rows`` (State API rows, also used
by ``zray.util.state`` and ``zray list``), ``metrics``, ``launch`` (starting
and finding a dashboard), ``sdk`` (the Jobs client of ``zray job``).
Importing this package imports nothing heavy.
"""
