"""Environments: the creator registry and the env runners that step them."""
