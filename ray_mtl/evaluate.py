"""Per-task evaluation: held-out cross-entropy, and BLEU/chrF of decoded translations; for
language models, cross-entropy, bits per byte and perplexity.

    metrics = evaluate_task(model, dev_table, prepared.decode, eval_pairs=500, bleu_pairs=100,
                            batch_tokens=4096, beam_size=1, device=device)
    # {"ce": 2.31, "bleu": 17.2, "chrf": 41.0, "bleu_signature": "nrefs:1|...", ...}
    metrics = evaluate_lm(lm, dev_table, eval_rows=500, batch_tokens=4096, device=device)
    # {"ce": 3.10, "bpb": 1.21, "ppl": 22.2, "tokens": 6210, "bytes": 25530}

``table`` is a task's prepared split: ``src`` and ``tgt`` (list<int32>, the source starting with
its language tag and both ending with EOS) and ``tgt_text`` (the reference); for a language,
``ids`` (ending with EOS) and ``bytes`` per row. Evaluation always takes the first rows, so every
evaluation of a run sees the same pairs or documents. Precision and eval mode follow the model's
policy (``model.autocast``, ``model.eval_mode``), as in training.

Bits per byte: the summed cross-entropy of every token of the rows (EOS included), in bits, over
their UTF-8 bytes (each document's EOS counting one byte, its newline): ``sum(nats) / (ln 2 *
bytes)``. It does not depend on the tokenizer, so languages and vocabularies compare;
cross-entropy and perplexity (``exp(ce)``) are per token of this tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pyarrow as pa
import torch
from sacrebleu.metrics import BLEU, CHRF

from ray_mtl.data.tokenizer import BOS, PAD
from ray_mtl.model import DecoderLM, Transformer, autocast, eval_mode, loss_fn, translate
from ray_mtl.sampler import length_batches

Batch = tuple[torch.Tensor, ...]
"""The model's inputs, then the labels: (src, tgt_in, tgt_out), or (tgt_in, tgt_out) of an LM."""


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


def lm_batches_from_table(table: pa.Table, max_rows: int, batch_tokens: int) -> list[Batch]:
    """(tgt_in, tgt_out) CPU LongTensors, PAD-padded, from the first ``max_rows`` document rows:
    ``tgt_in`` is ``[BOS] + ids[:-1]``, ``tgt_out`` is ``ids`` (ending with EOS)."""
    ids = table.slice(0, max_rows).column("ids").to_pylist()
    out = []
    for idx in length_batches([0] * len(ids), [len(x) for x in ids], batch_tokens):
        out.append((_pad([[BOS, *ids[i][:-1]] for i in idx]), _pad([ids[i] for i in idx])))
    return out


def summed_nats(
    model: Transformer | DecoderLM, batches: Iterable[Batch], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token cross-entropy in nats, non-PAD target tokens) over ``batches``: 0-d
    tensors on ``device``."""
    device = torch.device(device)
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    with eval_mode(model):
        for *inputs, tgt_out in batches:
            with autocast(device):
                logits = model(*(x.to(device) for x in inputs))
            loss, n = loss_fn(logits, tgt_out.to(device))
            total += loss
            count += n
    return total, count


def cross_entropy(
    model: Transformer | DecoderLM, batches: Iterable[Batch], device: torch.device
) -> float:
    """Mean token-level cross-entropy (nats) over all non-PAD target tokens of ``batches``."""
    total, count = summed_nats(model, batches, device)
    return (total / count).item()


def evaluate_lm(
    model: DecoderLM, table: pa.Table, *, eval_rows: int, batch_tokens: int, device: torch.device
) -> dict:
    """Cross-entropy per token, bits per byte and perplexity on the first ``eval_rows`` rows,
    with the token and byte counts they were taken over."""
    nats, tokens = summed_nats(model, lm_batches_from_table(table, eval_rows, batch_tokens), device)
    n_bytes = sum(table.slice(0, eval_rows).column("bytes").to_pylist())
    ce = (nats / tokens).item()
    return {
        "ce": ce,
        "bpb": nats.item() / (math.log(2) * n_bytes),
        "ppl": math.exp(ce),
        "tokens": int(tokens.item()),
        "bytes": n_bytes,
    }


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
