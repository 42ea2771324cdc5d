"""Regenerate the library's API reference (docs/reference/, HTML made by pdoc from the docstrings):

    python3 scripts/api_reference.py

The page documents ``model_provisioner.api.provisioner``: ``ModelProvisioner`` and the types it takes and
returns. tests/test_cli_messages.py fails when a public method or its summary line is not
in the committed page: run this after changing either.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference"
MODULES = ["model_provisioner.api.provisioner"]


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    command = [sys.executable, "-m", "pdoc", "-o", str(OUT), "--no-search", "--no-show-source", *MODULES]
    return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
