"""Keeping a running engine's handoff true: the supervisor writes the new pid after a restart, ``down`` marks
it stopped. The handoff's path comes from a state file others may write in a shared cache, so only a file
named like one (``.runtime/engines/<engine>.json``), reached without a symlink, owned by us and saying it is
this pool's is rewritten, keeping its permission bits; anything else is left alone (docs/engines.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from model_provisioner.core.errors import UnsafeCachePath
from model_provisioner.engines.state import PoolState
from model_provisioner.storage.safefs import open_in_cache, write_atomic


def update_handoff(state: PoolState, changes: dict[str, Any]) -> bool:
    """Set ``changes`` in the pool's handoff; True when it was rewritten."""
    if not state.handoff:
        return False
    path = Path(state.handoff)
    if (path.name, path.parent.name, path.parent.parent.name) != (f"{state.engine}.json", "engines", ".runtime"):
        return False
    try:
        fd = open_in_cache(path, os.O_RDONLY)
    except (OSError, UnsafeCachePath):
        return False
    try:
        st = os.fstat(fd)
        payload = json.loads(os.read(fd, 1 << 20))
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)
    if not isinstance(payload, dict) or payload.get("pool_id") != state.pool_id or st.st_uid != os.getuid():
        return False
    payload.update(changes)
    # an engine's reader never sees half a file
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), mode=st.st_mode & 0o777)
    return True
