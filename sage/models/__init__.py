"""The student and the frozen teacher, by concern:

- `sage.models.names`: what a ``name_or_path`` means (aliases, folders, Hugging Face ids offline or not),
  with `sage.models.hub` (is the Hub usable), `sage.models.smollm2` (the offline SmolLM2 alias) and
  `sage.shipped` (models shipped inside the package: the ALFWorld teacher's adapter);
- `sage.models.build`: tokenizer and model built on their device in their dtype, truncation, LoRA;
- `sage.models.checks`: student and teacher compatibility, checkpoint fit.
"""

from sage.models.build import (
    DTYPES,
    decoder_layers,
    freeze,
    keep_adapter_inputs,
    load_model,
    load_tokenizer,
    resolve_dtype,
    tiny_config,
    tiny_random_model,
    truncate_layers,
    vocab_rows,
)
from sage.models.checks import (
    CheckpointMismatchError,
    TokenizerMismatchError,
    check_student_state,
    check_tokenizers,
    shared_vocab_rows,
)
from sage.models.names import (
    ALIASES,
    TINY_ALIAS,
    ModelNotFoundError,
    ModelUnavailableOfflineError,
    known_aliases,
    resolve_name,
)
from sage.models.smollm2 import SMOLLM2_ALIAS, SMOLLM2_BOS, SMOLLM2_EOS, SMOLLM2_VOCAB, smollm2_path
from sage.specs import ModelSpec

__all__ = [
    "ALIASES", "DTYPES", "SMOLLM2_ALIAS", "SMOLLM2_BOS", "SMOLLM2_EOS", "SMOLLM2_VOCAB", "TINY_ALIAS",
    "CheckpointMismatchError", "ModelNotFoundError", "ModelSpec", "ModelUnavailableOfflineError",
    "TokenizerMismatchError", "check_student_state", "check_tokenizers", "decoder_layers", "freeze",
    "keep_adapter_inputs", "known_aliases", "load_model", "load_tokenizer", "resolve_dtype", "resolve_name",
    "shared_vocab_rows", "smollm2_path", "tiny_config", "tiny_random_model", "truncate_layers", "vocab_rows",
]
