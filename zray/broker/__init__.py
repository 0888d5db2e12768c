"""The ZeroMQ fabric: sockets, the wire protocol, request/reply and pub/sub."""
