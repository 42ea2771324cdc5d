"""Settings, model config files and the network policy (docs/settings.md)."""
