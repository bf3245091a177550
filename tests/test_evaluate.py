"""Per-task evaluation on a real SentencePiece model, real Tatoeba pairs and real sacrebleu; and
``python -m ray_mtl.evaluate`` scoring the session's smoke sweep on new files.

.venv/bin/python -m pytest -q tests/test_evaluate.py
"""

from __future__ import annotations

import gzip
import math
import shutil

import pytest
import sacrebleu
import torch
from test_model import MEMORISED, decoder, random_model, targets

from ray_mtl import evaluate, report
from ray_mtl.config import SpaceConfig, load
from ray_mtl.data import prepare
from ray_mtl.data.tokenizer import BOS, PAD
from ray_mtl.evaluate import batches_from_table, bleu_chrf, cross_entropy, evaluate_task
from ray_mtl.results import load_results


def test_batches_from_table(table):
    batches = batches_from_table(table, max_pairs=200, batch_tokens=256)
    again = batches_from_table(table, max_pairs=200, batch_tokens=256)
    assert all(
        torch.equal(x, y)
        for a, b in zip(batches, again, strict=True)
        for x, y in zip(a, b, strict=True)
    )
    assert len(batches) > 1
    src_rows = table.column("src").to_pylist()[:200]
    tgt_rows = table.column("tgt").to_pylist()[:200]
    seen = []
    for src, tgt_in, tgt_out in batches:
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == torch.long
        assert tgt_in.shape == tgt_out.shape and src.size(0) == tgt_in.size(0)
        assert src.numel() + tgt_in.numel() <= 256 or src.size(0) == 1
        assert (tgt_in[:, 0] == BOS).all()
        for s, ti, to in zip(src.tolist(), tgt_in.tolist(), tgt_out.tolist(), strict=True):
            s = s[: len(s) - s[::-1].index(next(x for x in s[::-1] if x != PAD))]
            n = sum(x != PAD for x in to)
            assert to[n:] == [PAD] * (len(to) - n) and ti[1:n] == to[: n - 1]
            seen.append((s, to[:n]))
    assert sorted(seen) == sorted(zip(src_rows, tgt_rows, strict=True))
    lengths = [(b[0].size(1), b[2].size(1)) for b in batches]
    assert [s for s, _ in lengths] == sorted(s for s, _ in lengths)  # length-sorted
    assert len(batches_from_table(table, max_pairs=5, batch_tokens=10_000)) == 1


def test_cross_entropy_is_the_token_mean(sp, table):
    model = random_model(sp)
    model.train()
    batches = batches_from_table(table, max_pairs=40, batch_tokens=300)
    got = cross_entropy(model, batches, torch.device("cpu"))
    assert model.training  # evaluation gives the model back in its mode

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for src, tgt in zip(
            table.column("src").to_pylist()[:40], table.column("tgt").to_pylist()[:40], strict=True
        ):
            logp = model(torch.tensor([src]), torch.tensor([[BOS, *tgt[:-1]]]))[0].log_softmax(-1)
            total -= sum(logp[i, t].item() for i, t in enumerate(tgt))
            count += len(tgt)
    assert got == pytest.approx(total / count, rel=1e-5)


def test_bleu_chrf_matches_sacrebleu():
    hyps = ["Tom este acasă.", "Mi-e foame acum.", "Am o pisică neagră."]
    refs = ["Tom e acasă.", "Mi-e foame.", "Am o pisică neagră."]
    got = bleu_chrf(hyps, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert 0 < got["bleu"] < 100 and 0 < got["chrf"] < 100
    assert "tok:13a" in got["bleu_signature"] and "nrefs:1" in got["bleu_signature"]
    assert got["chrf_signature"].startswith("nrefs:1|")
    assert bleu_chrf(refs, refs)["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        bleu_chrf(hyps[:2], refs)


def test_evaluate_task_on_a_memorised_set(overfit, sp):
    """Every target is more likely than MEMORISED, so greedy and beam search decode it exactly
    and the CE is below -log(MEMORISED) (a sentence's -log p spreads over its tokens)."""
    model, tbl, _ = overfit
    kw = dict(eval_pairs=32, batch_tokens=96, device=torch.device("cpu"))
    result = evaluate_task(model, tbl, decoder(sp), bleu_pairs=32, beam_size=1, **kw)
    assert set(result) == {"ce", "bleu", "chrf", "bleu_signature", "chrf_signature"}
    # hypotheses are decoded in length order but scored against their own references
    exact = bleu_chrf([decoder(sp)(t) for t in targets(tbl)], tbl.column("tgt_text").to_pylist())
    assert (result["bleu"], result["chrf"]) == (exact["bleu"], exact["chrf"])
    assert exact["bleu"] > 90  # the tokenizer round-trips nearly every reference
    assert result["ce"] < -math.log(MEMORISED)
    assert result["ce"] == pytest.approx(
        cross_entropy(model, batches_from_table(tbl, 32, 96), torch.device("cpu")), rel=1e-6
    )

    beam = evaluate_task(model, tbl, decoder(sp), bleu_pairs=32, beam_size=3, **kw)
    assert beam["bleu"] == exact["bleu"] and beam["ce"] == result["ce"]

    assert evaluate_task(model, tbl, decoder(sp), bleu_pairs=0, beam_size=1, **kw) == {
        "ce": result["ce"]
    }


def test_scoring_a_finished_sweep_on_a_new_file(smoke_sweep, shared_data, tmp_path, capsys):
    sweep = tmp_path / "smoke"
    shutil.copytree(smoke_sweep, sweep)  # the session's sweep stays as it ran
    finished = sorted(load_results(sweep).trials.query("status == 'finished'")["trial"])

    # The sweep's own evaluation set again, as a new file: the saved weights give the CE that
    # the trials measured at their end (CE over all 50 pairs both times; BLEU there used 16).
    again = tmp_path / "again.tsv"
    shutil.copy(smoke_sweep.parent / "extra.tsv", again)
    argv = [str(sweep), "--task", "eng-ron", "--file", str(again), "--trials", "all"]
    assert evaluate.main(argv) == 0
    table = report.evaluation_sets_table(load_results(sweep)).set_index(["set", "trial"])
    for trial in finished:
        assert table.loc[("again", trial), "ce"] == pytest.approx(
            table.loc[("extra", trial), "ce"], rel=1e-4
        ), trial

    # A file with pairs it trained on and a duplicate: those are left out and said so.
    data = prepare(load(SpaceConfig, sweep / "space.yaml").data, verbose=False)
    train = data.shard("eng-ron", "train").slice(0, 5)
    src, tgt = (train.column(c).to_pylist() for c in ("src_text", "tgt_text"))
    seen = [f"{s}\t{t}\n" for s, t in zip(src, tgt, strict=True)]
    with gzip.open(shared_data / "tatoeba" / "test" / "eng-ron.tsv.gz", "rt") as f:
        lines = [next(f) for _ in range(40)]
    new = tmp_path / "new_test.tsv"
    new.write_text("".join(lines + seen + lines[:1]))
    capsys.readouterr()
    assert evaluate.main([str(sweep), "--task", "eng-ron", "--file", str(new)]) == 0
    out = capsys.readouterr().out
    assert "1 duplicate, 5 in training data" in out and "evaluations/new_test" in out
    res = load_results(sweep)
    rows = res.metrics[res.metrics["split"] == "new_test"]
    front = evaluate.chosen_trials(res, "front")
    assert set(rows["metric"]) == {"ce", "bleu", "chrf", "best_step"} and front
    scored = report.evaluation_sets_table(res).query("set == 'new_test'")
    assert sorted(scored["trial"]) == front and scored["bleu"].between(0, 100).all()
    assert all(len(s) == 1 for s in res.signatures.values())  # one sacrebleu, one setting

    # Scored again, one trial's rows are replaced, not added; the report lists every set.
    argv = [str(sweep), "--task", "eng-ron", "--file", str(new), "--trials", front[0]]
    assert evaluate.main(argv) == 0
    assert (load_results(sweep).metrics["split"] == "new_test").sum() == len(rows)
    page = report.build_report(sweep).read_text()
    assert "Other evaluation sets" in page and all(s in page for s in ("new_test", "again"))
