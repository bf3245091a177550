"""One joint SentencePiece model for every language of a run.

    sample, _ = balanced_sample({"eng": [...], "ron": [...]}, size=200_000, temperature=5, seed=0)
    proto = train_tokenizer(sample, vocab_size=8000, tags=["<2fra>", "<2ron>"])

The training sample draws from each language with probability ∝ n^(1/T), so a low-resource
language gets far more than its share of the vocabulary. Unigram LM (fast to train and to encode
on CPU), identity normalisation (the corpus is already NFC with clean whitespace, so decoding
gives back the exact text) and fixed special ids: pad=0, unk=1, bos=2, eos=3, then the
target-language tags as user-defined symbols.
"""

from __future__ import annotations

import io
import random

import sentencepiece as spm

from ray_mtl.errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3

SETTINGS = dict(
    model_type="unigram",
    character_coverage=0.9995,
    normalization_rule_name="identity",
    num_threads=2,
)


def balanced_sample(
    by_lang: dict[str, list[str]], *, size: int, temperature: float, seed: int
) -> tuple[list[str], dict[str, int]]:
    """Up to ``size`` sentences, language ``l`` drawn at a rate ∝ n_l^(1/T), without repeats;
    and how many each language gave."""
    rng = random.Random(seed)
    weights = {lang: len(s) ** (1 / temperature) for lang, s in by_lang.items()}
    total = sum(weights.values())
    sample, taken = [], {}
    for lang in sorted(by_lang):
        pool = by_lang[lang]
        taken[lang] = min(len(pool), round(size * weights[lang] / total))
        sample += rng.sample(pool, taken[lang])
    rng.shuffle(sample)
    return sample, taken


def train_tokenizer(sentences: list[str], *, vocab_size: int, tags: list[str]) -> bytes:
    """Train the model and return its serialised proto."""
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buf,
            vocab_size=vocab_size,
            user_defined_symbols=tags,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            # A small corpus may not support the requested size: use what it supports.
            hard_vocab_limit=False,
            minloglevel=2,
            **SETTINGS,
        )
    except RuntimeError as e:
        raise UserError(f"vocab_size: cannot train a tokenizer of {vocab_size} ({e})") from None
    return buf.getvalue()
