"""Engines on verified models: build (from source), start, wait until ready, supervise, stop (docs/engines.md)."""
