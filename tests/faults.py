"""An action that makes an environment worker raise inside `step` (tests/test_env_faults.py).

It is a str, so the rollout records and JSON files take it as text, but the worker's `AlfworldEnv.step`
calls ``str(action)``, which raises there, in the worker process, on the real engine's code path.
"""

from __future__ import annotations


class Explosive(str):
    def __str__(self) -> str:
        raise RuntimeError(f"injected fault stepping {str.__str__(self)!r}")
