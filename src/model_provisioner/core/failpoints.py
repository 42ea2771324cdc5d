"""Failpoints: named places where a test can make the provisioner crash or pause, deterministically.

Set ``MODEL_PROVISIONER_FAILPOINTS`` to ``name=action[,name=action]`` where action is ``kill`` (SIGKILL
this process at that point), ``kill@N`` (SIGKILL the N-th time the point is reached, e.g. mid-transfer),
``pause:<file>`` (create <file>, then wait until it is deleted, at most
60 s) or ``error`` (raise). Unset in production: the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "MODEL_PROVISIONER_FAILPOINTS"


class FailpointError(RuntimeError):
    pass


def _parse(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        out[name] = action
    return out


_ACTIVE = _parse(os.environ.get(ENV, ""))
_REACHED: dict[str, int] = {}


def failpoint(name: str) -> None:
    action = _ACTIVE.get(name)
    if action is None:
        return
    if action.startswith("kill@"):
        _REACHED[name] = _REACHED.get(name, 0) + 1
        if _REACHED[name] >= int(action[5:]):
            os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("pause:"):
        marker = action.split(":", 1)[1]
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        deadline = time.monotonic() + 60
        while os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
    elif action == "error":
        raise FailpointError(f"failpoint {name}")
