"""Per-task evaluation: held-out cross-entropy, and BLEU/chrF of decoded translations; for
language models, cross-entropy, bits per byte and perplexity. And scoring a finished sweep on a
file it never saw:

    python -m ray_mtl.evaluate runs/cpu_paper --task eng-ron --file flores.tsv [--trials front]

scores each chosen trial (``front``: every method's dev front; ``all``; or trial ids) from its
saved best-per-task weights (``eval.keep_weights``) on the file's pairs (TSV or Parquet, as a
task's test files), leaving out pairs that share a side with the task's training pairs. The
scores join the sweep's results as the split ``--name`` (default: the file's stem), with
sacrebleu's signatures, and the report lists them.

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

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from sacrebleu.metrics import BLEU, CHRF

from ray_mtl import checkpoint
from ray_mtl.config import (
    ModelConfig,
    SpaceConfig,
    check,
    check_split_name,
    from_dict,
    load_yaml,
)
from ray_mtl.data.tokenizer import BOS, PAD
from ray_mtl.errors import UserError, cli
from ray_mtl.model import DecoderLM, Transformer, autocast, eval_mode, loss_fn, new_model, translate
from ray_mtl.sampler import length_batches
from ray_mtl.storage import is_file, join

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


# --------------------------------------------------------------------------------------------
# Scoring a finished sweep on a new file
# --------------------------------------------------------------------------------------------


def chosen_trials(results, which: str) -> list[str]:
    """``front``: every method's front members on dev (best value per task); ``all``: every
    finished trial; otherwise comma-separated trial ids of the sweep."""
    from ray_mtl.frontier import frontier

    if which == "front":
        fr = frontier(results)
        return sorted({m["trial"] for v in fr["methods"].values() for m in v["front"]})
    finished = results.trials.loc[results.trials["status"] == "finished", "trial"].tolist()
    if which == "all":
        return sorted(finished)
    asked = [t.strip() for t in which.split(",") if t.strip()]
    unknown = [t for t in asked if t not in set(results.trials["trial"])]
    if unknown or not asked:
        raise UserError(
            f"--trials: unknown trial {unknown[0] if unknown else which!r} (expected front, all, "
            f"or ids such as {', '.join(results.trials['trial'][:3])})"
        )
    return asked


def _trial_end(results, trial: str) -> tuple[str, int]:
    """(the segment a trial ends in, its final step)."""
    row = results.trials.set_index("trial").loc[trial]
    return str(json.loads(row["lineage"])[-1]["segment"]), int(row["final_step"])


def _file_pairs(file: str, task, prepared, max_len: int) -> tuple[pa.Table, dict[str, int]]:
    """The file's pairs, encoded as the sweep encoded its test set, without those that share a
    side with the task's training pairs; and how many were left out, and why."""
    from ray_mtl.data.corpus import read_pairs
    from ray_mtl.data.pipeline import encode_pairs
    from ray_mtl.data.splits import decontaminate, dedupe

    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"--file: {path}: file not found")
    pairs, stats = read_pairs(path, columns=task.columns, extra_columns=task.extra_columns)
    pairs, duplicate = dedupe(pairs)
    train = prepared.shard(task.name, "train")
    sides = (train.column(c).to_pylist() for c in ("src_text", "tgt_text"))
    trained = list(zip(*sides, strict=True))
    clean = decontaminate(pairs, trained)
    text = pa.table({"src": [p[0] for p in clean], "tgt": [p[1] for p in clean]})
    tag = prepared.lang_tag_id(task.name)
    table, too_long = encode_pairs(prepared.tokenizer(), text, tag, max_len)
    left_out = {
        "invalid": sum(stats.invalid.values()),
        "duplicate": duplicate,
        "in training data": len(pairs) - len(clean),
        "too long": too_long,
    }
    if table.num_rows == 0:
        raise UserError(f"--file: {path}: no pair left to score (left out: {left_out})")
    return table, left_out


def score_sweep(
    sweep: str,
    task_name: str,
    file: str,
    *,
    name: str | None = None,
    which: str = "front",
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict[str, int], str]:
    """Score the chosen trials of ``sweep`` on ``file`` for ``task_name`` and add the scores to
    its results. Returns (a row per trial: CE, BLEU, chrF), what was left out, the rows' URI."""
    from ray_mtl.data import prepare
    from ray_mtl.data.catalog import data_dir, resolve_tasks
    from ray_mtl.results import add_evaluation, load_results, metric_rows, signatures

    results = load_results(sweep)
    if results.kind != "translation":
        why = "scoring a file of pairs is for translation"
        raise UserError(f"{sweep}: a sweep of kind {results.kind!r}; {why}")
    tasks = results.tasks["high"] + results.tasks["low"]
    if task_name not in tasks:
        raise UserError(f"--task: expected one of {', '.join(tasks)}, got {task_name!r}")
    name = name or Path(file).name.split(".")[0]
    check_split_name(name, "--name")
    trials = chosen_trials(results, which)
    ends = {t: _trial_end(results, t) for t in trials}
    records = {}
    for t, (seg, step) in ends.items():
        run_dir = join(results.path, "segments", seg)
        if not is_file(checkpoint.weights_uri(run_dir, step)):
            raise UserError(
                f"trial {t}: no saved weights to score ({checkpoint.weights_uri(run_dir, step)} "
                "is not there); a trial keeps them once it has finished, in a sweep run with "
                "eval.keep_weights"
            )
        records[t] = checkpoint.load_weights(run_dir, step)
    space_uri = join(results.path, "space.yaml")
    space = from_dict(SpaceConfig, load_yaml(space_uri), space_uri)
    trained = sorted({n for sets in space.data.eval_sets.values() for n in sets})
    check(name not in trained, "--name", f"a name other than the sweep's own sets {trained}", name)
    prepared = prepare(space.data, verbose=False)
    tasks = resolve_tasks(space.data, data_dir(space.data).path)
    (task,) = (x for x in tasks if x.name == task_name)
    table, left_out = _file_pairs(file, task, prepared, space.data.max_len)
    rows, sigs, out = [], {}, []
    for t, (record, weights) in records.items():
        if record["manifest_hash"] != prepared.manifest_hash:
            raise UserError(
                f"trial {t}: its weights were trained on other prepared data (manifest hash "
                f"{record['manifest_hash']}, {space_uri}'s data now prepares to "
                f"{prepared.manifest_hash})"
            )
        model = new_model(space.kind, from_dict(ModelConfig, record["model"]), record["vocab_size"])
        best_step = record["best"][task_name]["step"]
        model.load_state_dict(weights[task_name])
        scores = evaluate_task(
            model.to(device),
            table,
            prepared.decode,
            eval_pairs=table.num_rows,
            bleu_pairs=table.num_rows,
            batch_tokens=space.batch_tokens,
            beam_size=space.eval.beam_size,
            device=torch.device(device),
        )
        seg, step = ends[t]
        flat = {f"{name}/{task_name}/{k}": v for k, v in scores.items()}
        rows += metric_rows(seg, {"step": step, **flat, f"{name}/{task_name}/best_step": best_step})
        sigs |= signatures(flat)
        out.append(
            {"trial": t, "pairs": table.num_rows, "best_step": best_step}
            | {k: v for k, v in scores.items() if not k.endswith("_signature")}
        )
    uri = add_evaluation(results.path, name, rows, sigs)
    return pd.DataFrame(out), left_out, uri


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ray_mtl.evaluate",
        description="Score a finished sweep's trials on a file of sentence pairs.",
    )
    p.add_argument("sweep", help="the sweep dir or storage URI")
    p.add_argument("--task", required=True, help="the task the file's pairs are of, e.g. eng-ron")
    p.add_argument("--file", required=True, help="TSV (source<TAB>target) or Parquet pairs")
    p.add_argument("--name", help="the set's name in the results (default: the file's stem)")
    p.add_argument("--trials", default="front", help="front (default), all, or trial ids a,b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    scores, left_out, uri = score_sweep(
        args.sweep, args.task, args.file, name=args.name, which=args.trials, device=args.device
    )
    dropped = ", ".join(f"{n:,} {why}" for why, n in left_out.items() if n) or "none"
    print(scores.to_string(index=False, float_format="{:.4g}".format))
    print(f"left out of {args.file}: {dropped}\nscores: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
