"""The byte-level tokenizer of the random-init presets: a real HF fast tokenizer, no download."""

from __future__ import annotations

TINY_TEXT_VOCAB = 512  # specials + bytes fit below; tiny image codes start here


def build_byte_tokenizer(specials: list[str]):
    """A real HF fast tokenizer: byte-level BPE without merges; ids 0..15 specials, 16..271 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    if len(specials) > 16:
        raise ValueError("at most 16 special tokens")
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({ch: 16 + i for i, ch in enumerate(sorted(ByteLevel.alphabet()))})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=specials[0], bos_token=specials[1], eos_token=specials[2])
