"""The version of this package, written here only: pyproject.toml reads it (``[tool.setuptools.dynamic]``)."""

VERSION = "0.1.0"
