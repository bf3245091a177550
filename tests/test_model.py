"""The Transformer and its decoding, on a real SentencePiece model and real Tatoeba pairs.

.venv/bin/python -m pytest -q tests/test_model.py
"""

from __future__ import annotations

import gzip
import io
import math

import pyarrow as pa
import pytest
import sentencepiece as spm
import torch

from ray_mtl.config import ModelConfig
from ray_mtl.model import (
    BOS,
    EOS,
    PAD,
    Transformer,
    beam_decode,
    greedy_decode,
    loss_fn,
    translate,
)

TAG = "<2ron>"


def read_pairs(shared_data) -> list[tuple[str, str]]:
    """The first 2000 eng-ron lines, keeping one translation per English sentence."""
    out, seen = [], set()
    with gzip.open(shared_data / "tatoeba" / "train" / "eng-ron.tsv.gz", "rt") as f:
        for _, line in zip(range(2000), f, strict=False):
            eng, ron = line.rstrip("\n").split("\t")[:2]
            if eng not in seen:
                seen.add(eng)
                out.append((eng, ron))
    return out


def train_sentencepiece(pairs) -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for pair in pairs for s in pair]),
        model_writer=model,
        vocab_size=300,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        user_defined_symbols=[TAG],
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def make_table(pairs, sp) -> pa.Table:
    """The prepared-data layout: src = [tag] + ids + [EOS], tgt = ids + [EOS], tgt_text."""
    tag = sp.piece_to_id(TAG)
    ids = pa.list_(pa.int32())
    return pa.table(
        {
            "src": pa.array([[tag, *sp.encode(e), EOS] for e, _ in pairs], ids),
            "tgt": pa.array([[*sp.encode(r), EOS] for _, r in pairs], ids),
            "tgt_text": [r for _, r in pairs],
        }
    )


def decoder(sp):
    """Ids -> text, dropping the specials and the tag as the data pipeline's decode does."""
    tag = sp.piece_to_id(TAG)
    return lambda ids: sp.decode([i for i in ids if i > EOS and i != tag])


def pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def tensors(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = table.column("src").to_pylist()
    tgt = table.column("tgt").to_pylist()
    return pad(src), pad([[BOS, *t[:-1]] for t in tgt]), pad(tgt)


def train(
    model: Transformer, src, tgt_in, tgt_out, steps: int, lr: float, done=lambda: False
) -> list[float]:
    """Full-batch AdamW steps; stops early when ``done()`` (asked every 25 steps) is true."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses = []
    for step in range(1, steps + 1):
        model.train()
        loss, n = loss_fn(model(src, tgt_in), tgt_out)
        opt.zero_grad()
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append((loss / n).item())
        if step % 25 == 0 and done():
            break
    return losses


def logprob(model: Transformer, src: torch.Tensor, hyps: list[list[int]]) -> torch.Tensor:
    """Teacher-forced log p(hyp + EOS | src) per sentence."""
    tgt_out = pad([[*h, EOS] for h in hyps])
    tgt_in = pad([[BOS, *h] for h in hyps])
    model.eval()
    with torch.no_grad():
        logp = model(src, tgt_in).log_softmax(-1)
    picked = logp.gather(-1, tgt_out[..., None])[..., 0]
    return (picked * (tgt_out != PAD)).sum(-1)


# Every memorised target is this likely or more: then greedy and beam search must return it (a
# sequence above 1/2 wins every argmax and every top-k), whatever the CPU's rounding did.
MEMORISED = 0.9


def targets(tbl: pa.Table) -> list[list[int]]:
    return [t[:-1] for t in tbl.column("tgt").to_pylist()]


def memorise(pairs, sp) -> tuple[Transformer, pa.Table, list[float]]:
    """A tiny model trained until 32 real pairs are memorised: (model, their table, losses).

    Training stops once every target has probability > MEMORISED (about 400 steps), so the
    decoding tests rest on that margin and not on how far one trajectory happened to get.
    """
    torch.manual_seed(0)
    tbl = make_table(pairs[100:132], sp)
    model = Transformer(ModelConfig(preset="tiny", dropout=0.0), len(sp))
    src, tgt_in, tgt_out = tensors(tbl)

    def done() -> bool:
        return bool(logprob(model, src, targets(tbl)).exp().min() > MEMORISED)

    losses = train(model, src, tgt_in, tgt_out, steps=1500, lr=6e-3, done=done)
    assert done(), f"32 pairs not memorised in {len(losses)} steps (loss {losses[-1]:.4f})"
    model.eval()
    return model, tbl, losses


def random_model(sp, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(preset="tiny", dropout=0.0, **kw), len(sp)).eval()


def test_shapes_and_causal_mask(sp, table):
    model = random_model(sp)
    src, tgt_in, _ = tensors(table.slice(0, 8))
    logits = model(src, tgt_in)
    assert logits.shape == (8, tgt_in.size(1), len(sp))
    memory, src_pad_mask = model.encode(src)
    assert memory.shape == (*src.shape, model.cfg.d_model)
    assert torch.equal(src_pad_mask, src == PAD)

    changed = tgt_in.clone()
    changed[:, 3] = 7
    after = model(src, changed)
    assert torch.allclose(after[:, :3], logits[:, :3], atol=1e-6)
    assert not torch.allclose(after[:, 3:], logits[:, 3:], atol=1e-3)


def test_padding_invariance(sp, table):
    model = random_model(sp)
    src, tgt_in, _ = tensors(table.slice(0, 8))
    more_pad = torch.cat([src, torch.zeros(8, 5, dtype=torch.long)], dim=1)
    assert torch.allclose(model(more_pad, tgt_in), model(src, tgt_in), atol=1e-5)
    # and one sentence alone equals it within a padded batch
    n = int((src[0] != PAD).sum())
    alone = model(src[:1, :n], tgt_in[:1])
    assert torch.allclose(alone, model(src, tgt_in)[:1], atol=1e-5)


def test_loss_fn_ignores_pad_and_sums(sp, table):
    model = random_model(sp)
    src, tgt_in, tgt_out = tensors(table.slice(0, 8))
    logits = model(src, tgt_in)
    total, n = loss_fn(logits, tgt_out)
    assert n.item() == sum(len(t) for t in table.slice(0, 8).column("tgt").to_pylist())
    keep = tgt_out != PAD
    ref = torch.nn.functional.cross_entropy(logits[keep], tgt_out[keep], reduction="sum")
    assert torch.allclose(total, ref, rtol=1e-5)
    smoothed, _ = loss_fn(logits, tgt_out, label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(total.item())


def test_every_parameter_gets_a_gradient(sp, table):
    """What DDP without find_unused_parameters needs; also a sane init and parameter count."""
    model = random_model(sp)
    model.train()
    loss, n = loss_fn(model(*tensors(table.slice(0, 4))[:2]), tensors(table.slice(0, 4))[2])
    assert abs((loss / n).item() - torch.log(torch.tensor(len(sp))).item()) < 1.5
    (loss / n).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.embed.weight.numel() == len(sp) * model.cfg.d_model
    assert "pos" not in model.state_dict()  # sinusoids are recomputed, not checkpointed


def test_compiles_without_graph_breaks(sp, table):
    model = random_model(sp)
    src, tgt_in, _ = tensors(table.slice(0, 4))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(src, tgt_in)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), model(src, tgt_in), atol=0.1)


def pack(rows: list[list[list[int]]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of sequences -> (ids [B, width], segment ids 1, 2, ... and 0 at PAD)."""
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    seg = torch.zeros_like(ids)
    for r, seqs in enumerate(rows):
        flat = [(x, k + 1) for k, seq in enumerate(seqs) for x in seq]
        ids[r, : len(flat)] = torch.tensor([x for x, _ in flat])
        seg[r, : len(flat)] = torch.tensor([k for _, k in flat])
    return ids, seg


def test_packed_rows_equal_pairs_alone(sp, table):
    """Several pairs in a row: each pair's logits as if it were alone (masks and positions)."""
    model = random_model(sp)
    src = table.column("src").to_pylist()[:5]
    tgt = table.column("tgt").to_pylist()[:5]
    tgt_in = [[BOS, *t[:-1]] for t in tgt]
    # Two rows of three and two pairs, PAD after them up to the longest row.
    groups = [[0, 1, 2], [3, 4]]
    width = max(sum(len(src[i]) for i in g) for g in groups)
    width = max(width, max(sum(len(tgt[i]) for i in g) for g in groups))
    packed_src, src_seg = pack([[src[i] for i in g] for g in groups], width)
    packed_in, tgt_seg = pack([[tgt_in[i] for i in g] for g in groups], width)
    logits = model(packed_src, packed_in, src_seg, tgt_seg)
    assert not logits.isnan().any()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    assert torch.allclose(compiled(packed_src, packed_in, src_seg, tgt_seg), logits, atol=1e-5)
    for r, g in enumerate(groups):
        for k, i in enumerate(g):
            alone = model(torch.tensor([src[i]]), torch.tensor([tgt_in[i]]))[0]
            assert torch.allclose(logits[r][tgt_seg[r] == k + 1], alone, atol=1e-5), (r, k)


def test_too_long_input_is_an_error(sp):
    model = random_model(sp, max_len=16)
    with pytest.raises(ValueError, match="max_len=16"):
        model.encode(torch.ones(1, 17, dtype=torch.long))


def generated(hyps: list[list[int]], max_len: int) -> list[list[int]]:
    """Decoded hypotheses with the EOS that ended them (a hypothesis cut at max_len has none)."""
    return [[*h, EOS] if len(h) < max_len else h for h in hyps]


def test_cached_greedy_matches_recomputation(sp, table):
    """The KV cache gives what recomputing the whole prefix gives: every token greedy picked
    is an argmax of the recomputed logits (to float noise, so a near-tie may go either way)."""
    model = random_model(sp)
    src, _, _ = tensors(table.slice(0, 6))
    hyps = generated(greedy_decode(model, src, max_len=20), 20)
    with torch.no_grad():
        logits = model(src, pad([[BOS, *h[:-1]] for h in hyps]))
    for i, h in enumerate(hyps):
        picked = logits[i, torch.arange(len(h)), torch.tensor(h)]
        assert (picked >= logits[i, : len(h)].max(-1).values - 1e-4).all(), i
    assert not model.training


def test_overfits_and_greedy_reproduces_targets(overfit, sp):
    from sacrebleu.metrics import BLEU

    model, tbl, losses = overfit
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    src, _, _ = tensors(tbl)
    assert greedy_decode(model, src, max_len=40) == targets(tbl)
    text = [decoder(sp)(t) for t in targets(tbl)]
    assert BLEU().corpus_score(text, [tbl.column("tgt_text").to_pylist()]).score > 90


def reference_beams(
    model: Transformer, src: list[int], k: int, max_len: int
) -> tuple[list[tuple[list[int], float]], float]:
    """Beam search as beam_decode documents it, for one sentence, recomputing every prefix in
    float64: the final beams (tokens, log p), and the smallest gap between the k-th and the
    (k + 1)-th candidate of a step. Where that gap is well above float noise, any correct beam
    search keeps the same beams.
    """
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    gap = math.inf
    for _ in range(max_len):
        live = [b for b in beams if b[0][-1:] != [EOS]]
        if not live:
            break
        with torch.no_grad():
            tgt_in = torch.tensor([[BOS, *toks] for toks, _ in live])
            logits = model(torch.tensor([src] * len(live)), tgt_in)[:, -1]
        # The k + 1 best candidates are among each live beam's k + 1 best continuations.
        top = logits.double().log_softmax(-1).topk(k + 1, dim=-1)
        cands = [b for b in beams if b not in live]  # a finished beam keeps its score
        for (toks, score), lps, ids in zip(live, top.values, top.indices, strict=True):
            steps = zip(lps.tolist(), ids.tolist(), strict=True)
            cands += [([*toks, t], score + lp) for lp, t in steps]
        cands.sort(key=lambda b: -b[1])
        gap = min(gap, cands[k - 1][1] - cands[k][1])
        beams = cands[:k]
    return beams, gap


def best_beam(beams: list[tuple[list[int], float]], length_penalty: float) -> tuple[list, float]:
    """The beam with the best ``log p / length ** length_penalty`` (EOS cut), and its lead."""
    ranked = sorted((score / max(len(toks), 1) ** length_penalty, toks) for toks, score in beams)
    toks = ranked[-1][1]
    return toks[: toks.index(EOS)] if EOS in toks else toks, ranked[-1][0] - ranked[-2][0]


def test_beam_search_finds_the_reference_beams(overfit, table):
    """Batched, cached beam search equals the plain one on unseen sentences (where the model is
    unsure and beams differ), by log-prob and by length-normalised score, wherever no near-tie
    decided a beam."""
    model, _, _ = overfit
    rows = table.column("src").to_pylist()[:32]
    src = pad(rows)
    fast = {lp: beam_decode(model, src, 4, 30, length_penalty=lp) for lp in (0.0, 1.0)}
    assert translate(model, src, beam_size=4, max_len=30) == fast[1.0]
    assert all(len(h) <= 30 and EOS not in h and BOS not in h for h in fast[0.0] + fast[1.0])
    clear = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one sentence at a time: threads only add overhead
    try:
        for i, row in enumerate(rows):
            beams, gap = reference_beams(model, row, 4, 30)
            for lp, hyps in fast.items():
                ref, lead = best_beam(beams, lp)
                if min(gap, lead) > 1e-3:
                    clear += 1
                    assert hyps[i] == ref, (i, lp)
    finally:
        torch.set_num_threads(threads)
    assert clear >= 48, f"only {clear} of 64 searches without a near-tie"
    greedy = greedy_decode(model, src, max_len=30)
    assert fast[0.0] != greedy, "beam search found nothing greedy missed: nothing was tested"


def test_beam_one_is_greedy_and_beam_four_scores_at_least_greedy(overfit, table):
    model, tbl, _ = overfit
    src = pad(tbl.column("src").to_pylist() + table.column("src").to_pylist()[:32])
    greedy = greedy_decode(model, src, max_len=30)
    assert beam_decode(model, src, beam_size=1, max_len=30) == greedy
    assert translate(model, src, beam_size=1, max_len=30) == greedy
    # A target above 1/2 wins every argmax and stays first in every top-k. Ranked by log p per
    # token, it also beats every other sequence h (log p(h) < log(1 - p), length <= max_len)
    # while log(1 - p) / max_len < log p / length.
    p = logprob(model, src[:32], targets(tbl)).exp()
    assert (p > MEMORISED).all()
    lengths = torch.tensor([len(t) + 1 for t in targets(tbl)])  # EOS included
    assert ((1 - p).log() / (2 * src.size(1) + 10) < p.log() / lengths).all()  # translate's max
    assert greedy[:32] == targets(tbl)
    assert beam_decode(model, src[:32], 4, 30, length_penalty=0.0) == targets(tbl)
    assert translate(model, src[:32], beam_size=4) == targets(tbl)
    # A greedy hypothesis above 1/(k + 1) can never leave the k beams (the k + 1 candidates are
    # disjoint events), so beam search ends with one at least as likely.
    beam = beam_decode(model, src, 4, 30, length_penalty=0.0)
    lp_beam, lp_greedy = logprob(model, src, beam), logprob(model, src, greedy)
    kept = (lp_greedy > math.log(1 / 5) + 1e-3) & torch.tensor([len(g) < 30 for g in greedy])
    assert (lp_beam[kept] >= lp_greedy[kept] - 1e-4).all()
