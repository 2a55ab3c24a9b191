"""Tokenizers: loading the checkpoint's, and building a tiny real one for tests and smoke runs.

The real checkpoint (``lerobot/pi0_base``) uses PaliGemma's SentencePiece tokenizer
(257k tokens); our loader only ever calls ``AutoTokenizer.from_pretrained`` on a local
directory. For tests we train a byte-level BPE with the ``tokenizers`` library on a few
task sentences: a genuine ``PreTrainedTokenizerFast`` that AutoTokenizer loads the same way,
small enough for a tiny π0 (a few hundred tokens). Byte-level means any prompt encodes,
with no unknown tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

IMAGE_TOKEN = "<image>"
#: Gemma's order of the first special tokens (pad 0, eos 1, bos 2, unk 3), kept for familiarity.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>")
_CORPUS: tuple[str, ...] = (
    "pick up the red cube and place it in the bowl",
    "lift the pot with both arms",
    "fold the towel, then push it to the left",
    "open the drawer and put the cup inside",
    "hand over the block from the right gripper to the left gripper",
    "stack the green block on top of the blue block",
)


def tiny_tokenizer(path: str | Path, vocab_size: int = 320, tasks: Sequence[str] = ()):
    """Train, save to ``path`` and return a small byte-level BPE ``PreTrainedTokenizerFast``.

    It has bos/eos/pad/unk and an ``<image>`` special token (the last id), and does not add
    special tokens by itself (the processor adds bos explicitly, as for PaliGemma).
    ``tasks``: the dataset's prompts, learnt with the built-in sentences so that their words
    become tokens of their own (with 320 tokens and the built-in corpus alone, "potato" is
    five pieces and a from-scratch model must learn to spell before it can tell the
    vegetables apart). Deterministic: the same call gives the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [line + "\n" for line in _CORPUS] * 4 + [" ".join(t.replace("_", " ").split()) + "\n"
                                                      for t in sorted(set(tasks))] * 8
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>", extra_special_tokens=[IMAGE_TOKEN])
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return tokenizer


def load_tokenizer(path: str | Path):
    """``AutoTokenizer`` from a local directory only (never the network); errors name the directory."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"{path} has no tokenizer files (tokenizer.json / tokenizer.model / tokenizer_config.json). "
            "π0 uses PaliGemma's tokenizer: copy google/paligemma-3b-pt-224's tokenizer files there, "
            "or point PolicyConfig.tokenizer at a directory that has them")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.bos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no bos token; π0's prompt starts with one")
    return tokenizer
