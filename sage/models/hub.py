"""Is the Hugging Face Hub usable, and what does the local Hugging Face cache hold: answered in seconds,
so an offline machine gets a clear message instead of the hub client's minute of retries."""

from __future__ import annotations

import os
import threading
from pathlib import Path

HUB_PROBE_SECONDS = 3.0  # how long an unreachable Hub may take to tell us so
_TRUE = {"1", "ON", "YES", "TRUE"}


def _hub_unreachable(endpoint: str, timeout: float) -> str | None:
    """Why ``endpoint`` cannot be reached (None if it answers at all, even with an HTTP error status).

    The probe runs in a daemon thread so that a slow DNS lookup cannot stretch it past ``timeout``;
    urllib uses the usual proxy variables, like the hub client."""
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # it answered
            outcome.append(None)
        except Exception as exc:  # URLError, timeouts, refused or unresolvable hosts, bad URLs
            outcome.append(f"{endpoint} cannot be reached ({getattr(exc, 'reason', exc)})")

    thread = threading.Thread(target=probe, daemon=True, name="sage-hub-probe")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{endpoint} did not answer within {timeout:g} s"


_HUB_STATUS: dict[str, str | None] = {}  # endpoint -> why unreachable (probed once per process)



def hub_offline_reason() -> str | None:
    """None when the Hugging Face Hub can be used; else why not (offline mode set, or no answer)."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in _TRUE:
            return f"{var}={os.environ[var]} (offline mode)"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set (offline mode)"
    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_STATUS:
        _HUB_STATUS[endpoint] = _hub_unreachable(endpoint, HUB_PROBE_SECONDS)
    return _HUB_STATUS[endpoint]



def hub_cache_folder(repo_id: str) -> Path | None:
    """The repo's snapshot folder in the local Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub), or None.

    Loading that folder, rather than the id with local_files_only, keeps every transformers code path off
    the network (some optional-file lookups, e.g. adapter_config.json, would still try the Hub)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:  # not a valid repo id: certainly not cached
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None

