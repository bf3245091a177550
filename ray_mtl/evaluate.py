"""Per-task evaluation: held-out cross-entropy, and BLEU/chrF of decoded translations.

    metrics = evaluate_task(model, dev_table, prepared.decode, eval_pairs=500, bleu_pairs=100,
                            batch_tokens=4096, beam_size=1, device=device)
    # {"ce": 2.31, "bleu": 17.2, "chrf": 41.0, "bleu_signature": "nrefs:1|...", ...}

``table`` is a task's prepared split: ``src`` and ``tgt`` (list<int32>, the source starting with
its language tag and both ending with EOS) and ``tgt_text`` (the reference). Evaluation always
takes the first rows, so every evaluation of a run sees the same pairs. Precision and eval mode
follow the model's policy (``model.autocast``, ``model.eval_mode``), as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyarrow as pa
import torch
from sacrebleu.metrics import BLEU, CHRF

from ray_mtl.data.tokenizer import BOS, PAD
from ray_mtl.model import Transformer, autocast, eval_mode, loss_fn, translate
from ray_mtl.sampler import length_batches

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def batches_from_table(table: pa.Table, max_pairs: int, batch_tokens: int) -> list[Batch]:
    """(src, tgt_in, tgt_out) CPU LongTensors, PAD-padded, from the first ``max_pairs`` rows.

    ``tgt_in`` is ``[BOS] + tgt[:-1]``, ``tgt_out`` is ``tgt`` (ending with EOS).
    """
    first = table.slice(0, max_pairs)  # converting only what is used: test splits run to 17k
    src, tgt = first.column("src").to_pylist(), first.column("tgt").to_pylist()
    out = []
    lengths = [len(x) for x in src], [len(x) for x in tgt]
    for idx in length_batches(*lengths, batch_tokens):
        out.append(
            (
                _pad([src[i] for i in idx]),
                _pad([[BOS, *tgt[i][:-1]] for i in idx]),
                _pad([tgt[i] for i in idx]),
            )
        )
    return out


def cross_entropy(model: Transformer, batches: Iterable[Batch], device: torch.device) -> float:
    """Mean token-level cross-entropy (nats) over all non-PAD target tokens of ``batches``."""
    device = torch.device(device)
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    with eval_mode(model):
        for src, tgt_in, tgt_out in batches:
            with autocast(device):
                logits = model(src.to(device), tgt_in.to(device))
            loss, n = loss_fn(logits, tgt_out.to(device))
            total += loss
            count += n
    return (total / count).item()


def bleu_chrf(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU (13a tokenisation) and chrF, sacrebleu defaults, with their signatures."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def evaluate_task(
    model: Transformer,
    table: pa.Table,
    decode_fn: Callable[[list[int]], str],
    *,
    eval_pairs: int,
    bleu_pairs: int,
    batch_tokens: int,
    beam_size: int,
    device: torch.device,
) -> dict:
    """CE on the first ``eval_pairs`` rows; BLEU/chrF on the first ``bleu_pairs`` (0: no decoding).

    Returns ``{"ce"}``, plus ``bleu``, ``chrf``, ``bleu_signature``, ``chrf_signature`` when
    decoding.
    """
    device = torch.device(device)
    result = {
        "ce": cross_entropy(model, batches_from_table(table, eval_pairs, batch_tokens), device)
    }
    if bleu_pairs == 0:
        return result
    first = table.slice(0, bleu_pairs)
    src, references = first.column("src").to_pylist(), first.column("tgt_text").to_pylist()
    hypotheses = [""] * len(src)
    # Beams multiply the batch: keep the decoded tokens per batch near batch_tokens.
    decoded = [2 * len(s) for s in src]
    for idx in length_batches(decoded, [0] * len(src), max(1, batch_tokens // beam_size)):
        with autocast(device):
            ids = translate(model, _pad([src[i] for i in idx]).to(device), beam_size=beam_size)
        for i, hyp in zip(idx, ids, strict=True):
            hypotheses[i] = decode_fn(hyp)
    return result | bleu_chrf(hypotheses, references)
