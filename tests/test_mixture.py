"""Rate rules (pure, milliseconds) and the sampler on real Tatoeba lines encoded with a real
SentencePiece model: rates, resume, DDP sharding, epochs.

    .venv/bin/python -m pytest -q tests/test_mixture.py
"""

from __future__ import annotations

import gzip
import io
import itertools
from collections import Counter

import pyarrow as pa
import pytest
import torch

from ray_mtl.config import MixtureConfig, check_rates, from_dict
from ray_mtl.data.tokenizer import BOS, EOS, PAD
from ray_mtl.errors import UserError
from ray_mtl.rates import rates
from ray_mtl.sampler import MixtureSampler

# Train pairs of the shipped corpora (data/README.md).
SIZES = {"deu": 169197, "fra": 167130, "spa": 118964, "ron": 14237, "ind": 7151}


# -- rate rules -------------------------------------------------------------------------------


def test_explicit_rates_fill_unnamed_tasks_with_zero():
    w = rates(SIZES, MixtureConfig(rule="explicit", rates={"fra": 0.7, "ron": 0.3}))
    assert w == {"deu": 0.0, "fra": pytest.approx(0.7), "spa": 0.0, "ron": pytest.approx(0.3),
                 "ind": 0.0}  # fmt: skip


def test_proportional_is_temperature_one():
    prop = rates(SIZES, MixtureConfig(rule="proportional"))
    temp = rates(SIZES, MixtureConfig(rule="temperature", temperature=1.0))
    total = sum(SIZES.values())
    for name, n in SIZES.items():
        assert prop[name] == pytest.approx(n / total)
        assert temp[name] == pytest.approx(prop[name])
    assert sum(prop.values()) == pytest.approx(1)


def test_temperature_flattens_towards_uniform():
    t5 = rates(SIZES, MixtureConfig(rule="temperature", temperature=5.0))
    big = rates(SIZES, MixtureConfig(rule="temperature", temperature=1e6))
    prop = rates(SIZES, MixtureConfig(rule="proportional"))
    assert prop["ind"] < t5["ind"] < big["ind"]
    assert t5["ind"] == pytest.approx(7151**0.2 / sum(n**0.2 for n in SIZES.values()))
    for v in big.values():
        assert v == pytest.approx(0.2, abs=1e-4)


def test_unimax_worked_example():
    # Budget 600, at most 2 epochs. Smallest first: a gets min(600/3, 2*10) = 20, leaving 580;
    # b gets min(580/2, 2*100) = 200, leaving 380; c gets min(380/1, 2*1000) = 380.
    sizes = {"c": 1000, "a": 10, "b": 100, "unused": 5}
    cfg = MixtureConfig(rule="unimax", budget=600, max_epochs=2.0, tasks=["a", "b", "c"])
    w = rates(sizes, cfg)
    assert w == pytest.approx({"c": 380 / 600, "a": 20 / 600, "b": 200 / 600, "unused": 0.0})


def test_unimax_large_budget_is_uniform_small_budget_caps_epochs():
    w = rates(SIZES, MixtureConfig(rule="unimax", budget=30_000, max_epochs=1.0))
    assert all(v == pytest.approx(0.2) for v in w.values())
    w = rates(SIZES, MixtureConfig(rule="unimax", budget=300_000, max_epochs=1.0))
    assert w["ind"] == pytest.approx(7151 / 300_000)  # a single epoch of ind, no more


def test_tasks_restrict_derived_rules():
    w = rates(SIZES, MixtureConfig(rule="proportional", tasks=["fra", "ron"]))
    assert w["fra"] == pytest.approx(167130 / (167130 + 14237))
    assert w["deu"] == w["spa"] == w["ind"] == 0.0


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(rule="explicit", rates={"fra": 1.2, "ron": -0.2}), r"rates\.fra: expected a rate"),
        (dict(rule="explicit", rates={"fra": 0.5, "ron": 0.4}), "rates summing to 1, got 0.9"),
        (dict(rule="explicit", rates={"fra": 0.5, "xx": 0.5}), r"mixture\.rates\.xx: unknown"),
        (dict(rule="temperature", temperature=0), "temperature: expected a positive"),
        (dict(rule="proportional", tasks=["fra", "kor"]), r"mixture\.tasks\[1\]: unknown task"),
        (dict(rule="unimax"), "budget: expected a positive integer"),
    ],
)
def test_bad_mixture_is_a_user_error(cfg, message):
    with pytest.raises(UserError, match=message):
        rates(SIZES, from_dict(MixtureConfig, cfg))


def test_check_rates_messages():
    tasks = list(SIZES)
    with pytest.raises(UserError, match=r"rates\.ron: expected a rate in \[0, 1\], got -0.1"):
        check_rates({"fra": 1.0, "ron": -0.1}, tasks)
    with pytest.raises(UserError, match=r"rates: expected rates summing to 1, got 0\.5"):
        check_rates({"fra": 0.5}, tasks)
    with pytest.raises(UserError, match=r"rates\.kor: unknown task \(expected one of deu, fra"):
        check_rates({"kor": 1.0}, tasks)


# -- sampler on real token ids ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    """Real Tatoeba pairs (eng-fra, eng-ron, and a 40-pair slice of eng-ind) encoded with a
    SentencePiece model trained here, written as Arrow files and memory-mapped like the shards."""
    import sentencepiece as spm

    def read(lang, n):
        path = shared_data / "tatoeba" / "train" / f"eng-{lang}.tsv.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n").split("\t")[:2] for line in itertools.islice(f, n)]

    pairs = {"fra": read("fra", 2000), "ron": read("ron", 1000), "ind": read("ind", 40)}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for p in pairs.values() for pair in p for s in pair]),
        model_writer=model, vocab_size=300, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    out = {}
    for lang, p in pairs.items():
        table = pa.table(
            {
                "src": pa.array(sp.encode([e for e, _ in p]), type=pa.list_(pa.int32())),
                "tgt": pa.array([[*ids, EOS] for ids in sp.encode([t for _, t in p])],
                                type=pa.list_(pa.int32())),
            }
        )  # fmt: skip
        path = tmp_path_factory.mktemp("shards") / f"{lang}.arrow"
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        mapped = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        out[lang] = (mapped["src"], mapped["tgt"])
    return out


def rows(batch, tasks):
    """The examples of a batch (packed or not) as comparable tuples (task, src ids, tgt ids)."""
    out = []
    for r in range(batch.src.size(0)):
        packed = batch.src_seg is not None
        src_seg = batch.src_seg[r] if packed else (batch.src[r] != PAD).long()
        tgt_seg = batch.tgt_seg[r] if packed else (batch.tgt_out[r] != PAD).long()
        for k in sorted(set(tgt_seg.tolist()) - {0}):
            src, tgt = batch.src[r][src_seg == k], batch.tgt_out[r][tgt_seg == k]
            task = tasks[batch.task_ids[r][tgt_seg == k][0]]
            out.append((task, tuple(src.tolist()), tuple(tgt.tolist())))
    return out


def test_batch_layout_and_budget(shards):
    s = MixtureSampler(shards, {"fra": 0.5, "ron": 0.3, "ind": 0.2}, batch_tokens=512, seed=0)
    for _ in range(30):
        b = s.next_batch()
        assert b.src.dtype == b.tgt_in.dtype == b.tgt_out.dtype == b.task_ids.dtype == torch.long
        n, t = b.tgt_out.shape
        assert b.src.shape[0] == n == b.tgt_in.shape[0] and b.task_ids.shape == (n, t)
        assert n * (b.src.shape[1] + t) <= 512
        assert (b.tgt_in[:, 0] == BOS).all()
        shifted = b.tgt_out[:, :-1]
        assert torch.equal(b.tgt_in[:, 1:], shifted.masked_fill(shifted == EOS, PAD))
        lengths = (b.tgt_out != PAD).sum(1)
        assert (b.tgt_out[torch.arange(n), lengths - 1] == EOS).all()
        assert b.n_tokens == int(lengths.sum())


def test_packed_batch_layout(shards):
    s = MixtureSampler(shards, {"fra": 0.5, "ron": 0.3, "ind": 0.2}, 1024, seed=0, pack_length=64)
    for _ in range(30):
        b = s.next_batch()
        assert b.src.shape == b.tgt_out.shape == b.tgt_in.shape == b.task_ids.shape == (8, 64)
        assert b.src_seg.shape == b.tgt_seg.shape == (8, 64)
        for x, seg in ((b.src, b.src_seg), (b.tgt_out, b.tgt_seg)):
            assert torch.equal(seg == 0, x == PAD)  # pairs have no PAD inside them
            # Segments 1, 2, ... in order, each contiguous, and PAD only at the end of a row.
            assert (seg[:, 1:] - seg[:, :-1] >= 0).logical_or(seg[:, 1:] == 0).all()
            assert ((seg[:, 1:] - seg[:, :-1]).clamp(min=0) <= 1).all()
        assert torch.equal(b.src_seg.amax(1), b.tgt_seg.amax(1))  # as many sources as targets
        # Decoder input per pair: BOS, then the target shifted right by one.
        starts = torch.ones_like(b.tgt_seg, dtype=torch.bool)
        starts[:, 1:] = b.tgt_seg[:, 1:] != b.tgt_seg[:, :-1]
        assert (b.tgt_in[starts & (b.tgt_seg > 0)] == BOS).all()
        inner = ~starts[:, 1:] & (b.tgt_seg[:, 1:] > 0)
        assert torch.equal(b.tgt_in[:, 1:][inner], b.tgt_out[:, :-1][inner])
        assert b.n_tokens == int((b.tgt_out != PAD).sum())
    # Most of a row is tokens (on these slices the sources run ~15% shorter than the targets).
    assert padding_efficiency(s) > 0.8


def test_packing_rejects_a_pair_longer_than_a_row(shards):
    s = MixtureSampler(shards, {"fra": 1.0}, batch_tokens=512, seed=0, pack_length=8)
    with pytest.raises(UserError, match="pack_length: expected at least the longest pair"):
        for _ in range(20):
            s.next_batch()


def padding_efficiency(sampler, n=100):
    batches = [sampler.next_batch() for _ in range(n)]
    real = sum(int((b.src != PAD).sum() + (b.tgt_out != PAD).sum()) for b in batches)
    return real / sum(b.src.numel() + b.tgt_out.numel() for b in batches)


def test_length_bucketing_reduces_padding(shards):
    w = {"fra": 0.5, "ron": 0.3, "ind": 0.2}
    bucketed = padding_efficiency(MixtureSampler(shards, w, 2048, seed=0))
    unsorted = padding_efficiency(MixtureSampler(shards, w, 2048, seed=0, pool_batches=1))
    assert bucketed > 0.75 and bucketed > unsorted + 0.1, (bucketed, unsorted)


@pytest.mark.parametrize(
    "cfg, pack",
    [
        (dict(rule="explicit", rates={"fra": 0.6, "ron": 0.3, "ind": 0.1}), 0),
        (dict(rule="explicit", rates={"fra": 0.6, "ron": 0.3, "ind": 0.1}), 64),
        (dict(rule="temperature", temperature=5.0), 0),
        (dict(rule="unimax", budget=60_000, max_epochs=4.0), 0),
    ],
)
def test_realized_rates_match_targets(shards, cfg, pack):
    # Rates from the full corpora's sizes, sampled over the real encoded slices.
    w = rates({k: SIZES[k] for k in shards}, from_dict(MixtureConfig, cfg))
    s = MixtureSampler(shards, w, batch_tokens=2048, seed=1, pack_length=pack)
    while sum(a["examples"] for a in s.accounting().values()) < 10_000:
        s.next_batch()
    for name, acc in s.accounting().items():
        assert acc["target_rate"] == pytest.approx(w[name])
        assert abs(acc["realized_rate"] - w[name]) < 0.01, (name, acc)


@pytest.mark.parametrize("pack", [0, 64])
@pytest.mark.parametrize("before", [0, 1, 20, 50])  # 0: no pool yet; 20: a pool boundary
def test_resume_continues_the_exact_stream(shards, before, pack):
    def make():
        w = {"fra": 0.5, "ron": 0.4, "ind": 0.1}
        return MixtureSampler(shards, w, 300, seed=7, pack_length=pack)

    a = make()
    for _ in range(before):
        a.next_batch()
    buf = io.BytesIO()
    torch.save({"sampler": a.state_dict()}, buf)  # as in a checkpoint
    expected = [rows(a.next_batch(), a.tasks) for _ in range(50)]
    a.set_rates({"ind": 1.0})  # a phase change after the resume point
    expected += [rows(a.next_batch(), a.tasks) for _ in range(5)]
    b = make()
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True)["sampler"])
    got = [rows(b.next_batch(), b.tasks) for _ in range(50)]
    b.set_rates({"ind": 1.0})
    got += [rows(b.next_batch(), b.tasks) for _ in range(5)]
    assert got == expected
    assert b.accounting() == a.accounting()


@pytest.mark.parametrize("pack", [0, 64])
def test_two_ranks_cover_exactly_one_rank(shards, pack):
    w = {"fra": 0.5, "ron": 0.3, "ind": 0.2}
    kw = dict(batch_tokens=600 if not pack else 512, seed=3, pack_length=pack)
    one = MixtureSampler(shards, w, **kw)
    r0 = MixtureSampler(shards, w, rank=0, world_size=2, **kw)
    r1 = MixtureSampler(shards, w, rank=1, world_size=2, **kw)
    for _ in range(40):
        a, b = rows(r0.next_batch(), r0.tasks), rows(r1.next_batch(), r1.tasks)
        assert a and b
        assert Counter(a) + Counter(b) == Counter(rows(one.next_batch(), one.tasks))
    assert r0.accounting() == r1.accounting() == one.accounting()


def test_epochs_of_a_tiny_task(shards):
    # A one-batch pool keeps the look-ahead short, so deliveries follow the stream closely.
    s = MixtureSampler(shards, {"fra": 0.7, "ind": 0.3}, 1024, seed=0, pool_batches=1)
    seen = Counter()
    while s.accounting()["ind"]["examples"] < 2000:
        b = s.next_batch()
        seen.update(r for r in rows(b, s.tasks) if r[0] == "ind")
    acc = s.accounting()["ind"]
    assert acc["epochs"] == acc["examples"] / 40 >= 50
    # A fresh permutation per epoch: every one of the 40 examples is seen `epochs` times, give or
    # take the pool's look-ahead (i.i.d. draws with replacement would spread counts by ~7).
    assert len(seen) == 40
    assert max(seen.values()) - min(seen.values()) <= 2, sorted(seen.values())
    assert s.accounting()["ron"]["examples"] == 0


def test_set_rates_takes_effect_at_the_next_batch(shards):
    s = MixtureSampler(shards, {"fra": 1.0}, batch_tokens=512, seed=0)
    s.next_batch()
    s.set_rates({"ron": 1.0})
    b = s.next_batch()
    assert set(b.task_ids.flatten().tolist()) == {s.tasks.index("ron")}
    acc = s.accounting()
    assert acc["ron"]["realized_rate"] == 1.0 and acc["fra"]["examples"] > 0
    with pytest.raises(UserError, match="rates: expected rates summing to 1"):
        s.set_rates({"ron": 0.5})


def test_python_lists_work_like_arrow(shards):
    lists = {k: (src.to_pylist(), tgt.to_pylist()) for k, (src, tgt) in shards.items()}
    w = {"fra": 0.5, "ron": 0.5}
    a = MixtureSampler(shards, w, batch_tokens=400, seed=2)
    b = MixtureSampler(lists, w, batch_tokens=400, seed=2)
    for _ in range(10):
        assert rows(a.next_batch(), a.tasks) == rows(b.next_batch(), b.tasks)


def test_state_from_another_run_is_rejected(shards):
    a = MixtureSampler(shards, {"fra": 1.0}, batch_tokens=400, seed=2)
    b = MixtureSampler(shards, {"fra": 1.0}, batch_tokens=800, seed=2)
    with pytest.raises(UserError, match="saved with batch_tokens=400, this run has 800"):
        b.load_state_dict(a.state_dict())
