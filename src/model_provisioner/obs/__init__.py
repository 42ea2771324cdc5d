"""Observability: logs, metrics and the audit trail (docs/architecture.md)."""
