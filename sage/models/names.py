"""Model names: what a ``name_or_path`` in a config means, and where its files are.

- an alias (`ALIASES`): a local folder made on first use, offline (add an alias there, in one line);
- ``"tiny-random"`` (`TINY_ALIAS`): a tiny randomly initialized Llama, built in memory (`sage.models.build`),
  with SmolLM2's tokenizer (tests, quickstart);
- a local folder (loaded with ``local_files_only``);
- a Hugging Face id: normal hub behaviour; when the Hub is unreachable or ``HF_HUB_OFFLINE`` is set, the
  local Hugging Face cache, else one clear `ModelUnavailableOfflineError` within seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sage.errors import InputError
from sage.models.hub import hub_cache_folder, hub_offline_reason
from sage.models.smollm2 import SMOLLM2_ALIAS, smollm2_path
from sage.shipped import SHIPPED

# alias -> the function returning its local folder (making it on first use); a model shipped inside the
# package (`sage.shipped`: an adapter merged at build time) resolves to its base model's folder
ALIASES: dict[str, Callable[[], Path]] = {SMOLLM2_ALIAS: smollm2_path}
ALIASES.update({name: ALIASES[base] for name, (base, _) in SHIPPED.items()})
TINY_ALIAS = "tiny-random"
TINY_TOKENIZER = SMOLLM2_ALIAS  # the tokenizer "tiny-random" models use


class ModelNotFoundError(InputError, FileNotFoundError):
    """A model name that is no folder, alias or loadable Hugging Face id."""


class ModelUnavailableOfflineError(ModelNotFoundError):
    """A Hugging Face id that is neither a local folder nor in the local Hugging Face cache, while the Hub
    cannot be reached (offline mode or no answer): nothing to load, and retrying would only waste minutes."""



def known_aliases() -> str:
    return ", ".join(repr(a) for a in (*ALIASES, TINY_ALIAS))


def is_tiny(name: str) -> bool:
    return name == TINY_ALIAS


def resolve_name(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only). A missing path gives a clear error, not a hub 404.

    A Hugging Face id is left to the hub client when the Hub can be reached. When it cannot (offline
    mode, or no answer within `HUB_PROBE_SECONDS`), the cached snapshot folder is loaded and an
    uncached id fails at once with `ModelUnavailableOfflineError`: the hub client would otherwise retry
    every file for about a minute before failing with a less helpful message."""
    if name in ALIASES:
        return str(ALIASES[name]()), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if name.startswith(("/", ".", "~")) or path.exists() or name.count("/") > 1:
        raise ModelNotFoundError(
            f"model {name!r}: no such folder (known aliases: {known_aliases()})"
        )
    reason = hub_offline_reason()
    if reason is None:
        return name, False
    cached = hub_cache_folder(name)
    if cached is not None:
        return str(cached), True
    from huggingface_hub import constants

    raise ModelUnavailableOfflineError(
        f"model {name!r} is neither a local folder nor in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}; set by HF_HUB_CACHE or HF_HOME), and the Hugging Face Hub cannot be "
        f"used: {reason}. Pass a local folder (a path to a saved model), set HF_HOME to a cache that "
        f"holds {name!r}, or download it first where there is network: `hf download {name}` "
        f"(older clients: `huggingface-cli download {name}`). Known aliases: {known_aliases()}."
    )

