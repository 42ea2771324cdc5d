"""The version of this package (pyproject.toml's ``version``; a test keeps the two equal)."""

VERSION = "0.1.0"
