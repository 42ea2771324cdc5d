"""The HTTP API (FastAPI): app, routes, schemas, the bounded job registry."""
