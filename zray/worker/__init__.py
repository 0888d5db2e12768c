"""Core worker and the worker process."""
