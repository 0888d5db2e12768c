"""Shared numerics: GAE, n-step returns, V-trace, replay buffers, metrics."""
