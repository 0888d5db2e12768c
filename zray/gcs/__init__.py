"""The Global Control Store: cluster tables and the event stream."""
