"""Language modelling (``kind: lm``) on real slices of the shipped text: data, sampler, model,
bits per byte, the loop's fork properties, DDP, and the LM smoke sweep.

    .venv/bin/python -m pytest -q tests/test_lm.py

Tasks are languages: the French and Romanian sides of the shipped Tatoeba pairs (``lm_data_cfg``
in conftest.py). A tiny decoder without dropout makes runs exact on CPU, so the prefix invariant
and branch equivalence are checked with ``torch.equal``, as for translation in test_train.py.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_train import assert_same_weights, checkpoint, fit_on_ray, reported

from ray_mtl import train
from ray_mtl.config import (
    DataConfig,
    EvalConfig,
    LanguageSpec,
    MixtureConfig,
    ModelConfig,
    OptimConfig,
    PhaseConfig,
    ResourcesConfig,
    SpaceConfig,
    TrainConfig,
    from_dict,
    load,
    to_dict,
)
from ray_mtl.data import BOS, EOS, PAD, prepare
from ray_mtl.data.corpus import normalise
from ray_mtl.data.text import document_rows
from ray_mtl.evaluate import evaluate_lm
from ray_mtl.model import DecoderLM, token_losses
from ray_mtl.plan import plan, segment_config
from ray_mtl.rates import rates
from ray_mtl.report import FIGURES
from ray_mtl.sampler import MixtureSampler

TASKS = ["fra", "ron"]
L, F = 8, 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores stall (see test_train.py)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(lm_data_cfg):
    return prepare(lm_data_cfg, verbose=False)


def french(shared_data: Path, n: int, split: str = "train") -> list[str]:
    """The first ``n`` French sentences of the shipped eng-fra pairs, as read from the file."""
    path = shared_data / "tatoeba" / split / "eng-fra.tsv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t")[1] for line in itertools.islice(f, n)]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_prepared_languages_are_clean_split_and_decontaminated(prepared, lm_data_cfg, tmp_path):
    assert prepared.kind == "lm" and prepared.tasks == TASKS
    assert prepared.manifest["tokenizer"]["tags"] == []  # no language tags for an LM
    for t in TASKS:
        entry = prepared.manifest["tasks"][t]
        c = entry["counts"]
        invalid = sum(c["invalid"].values())
        assert (
            c["raw"]
            == invalid
            + c["duplicate"]
            + c["decontaminated"]
            + c["train"]
            + c["dev"]
            + c["test"]
            + c["too_long"]
        )
        shards = {s: prepared.shard(t, s) for s in ("train", "dev", "test")}
        assert shards["train"].column_names == ["ids", "text", "bytes"]
        assert {s: shards[s].num_rows for s in shards} == entry["rows"]
        assert prepared.size(t) == entry["rows"]["train"] >= c["train"]
        texts = {s: set(shards[s].column("text").to_pylist()) for s in shards}
        assert not texts["train"] & (texts["dev"] | texts["test"])  # decontaminated
        assert not texts["dev"] & texts["test"]
        for row in shards["dev"].to_pylist():
            assert row["text"] == normalise(row["text"])
            assert len(row["ids"]) <= lm_data_cfg.max_len and row["ids"][-1] == EOS
            assert row["bytes"] == len(row["text"].encode()) + 1
    # The held-out sets are carved with a fixed seed: a fresh build gives the same rows.
    again = prepare(DataConfig(**{**vars(lm_data_cfg), "out_dir": str(tmp_path)}), verbose=False)
    assert again.built  # built anew, not read from the first build's cache
    assert again.shard("ron", "dev").equals(prepared.shard("ron", "dev"))


def test_long_documents_are_cut_into_rows_that_add_up(prepared, shared_data):
    sp = prepared.tokenizer()
    docs = [" ".join(french(shared_data, 60)[i : i + 6]) for i in range(0, 60, 6)]
    ids, texts, n_bytes = document_rows(sp, docs, max_len=16)
    assert len(ids) > len(docs) and all(len(r) <= 16 for r in ids)
    assert "".join(texts) == "".join(docs)  # the rows tile each document's text
    assert sum(n_bytes) == sum(len(d.encode()) + 1 for d in docs)
    flat = [x for r in ids for x in r]
    assert flat == [x for d in docs for x in [*sp.encode(d), EOS]]


def test_custom_language_from_text_jsonl_and_parquet(shared_data, tmp_path):
    lines = [s for s in french(shared_data, 400) if s.strip()]
    formats = {
        "plain.txt": "\n".join(lines).encode() + b"\n",
        "plain.txt.gz": gzip.compress("\n".join(lines).encode()),
        "docs.jsonl": "\n".join(json.dumps({"text": s, "id": i}) for i, s in enumerate(lines)),
        "docs.jsonl.gz": gzip.compress("\n".join(json.dumps({"body": s}) for s in lines).encode()),
    }
    for name, content in formats.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    pq.write_table(pa.table({"body": lines}), tmp_path / "docs.parquet")
    specs = [
        LanguageSpec(name=f"fr{i}", train=[str(tmp_path / f)], text_field=field)
        for i, (f, field) in enumerate(
            [
                ("plain.txt", "text"),
                ("plain.txt.gz", "text"),
                ("docs.jsonl", "text"),
                ("docs.jsonl.gz", "body"),
                ("docs.parquet", "body"),
            ]
        )
    ]
    cfg = DataConfig(
        kind="lm",
        tasks=[s.name for s in specs],
        custom_languages=specs,
        vocab_size=300,
        out_dir=str(tmp_path / "out"),
    )
    data = prepare(cfg, verbose=False)
    splits = [
        {s: data.shard(t, s).column("text").to_pylist() for s in ("train", "dev", "test")}
        for t in data.tasks
    ]
    counts = [data.manifest["tasks"][t]["counts"] for t in data.tasks]
    assert all(c == counts[0] for c in counts) and counts[0]["raw"] == len(lines)
    # Each format yields the same documents; the split seed is per language name, so the same
    # documents land in train/dev/test however each was carved.
    docs = [sorted(itertools.chain(*s.values())) for s in splits]
    assert all(d == docs[0] for d in docs)


def test_invalid_lines_are_counted_per_reason(shared_data, tmp_path):
    good = [json.dumps({"text": s}) for s in french(shared_data, 200)]
    bad = ["{not json", json.dumps({"other": "x"}), json.dumps({"text": 3}), json.dumps(["a"])]
    bad += [json.dumps({"text": "   "})]
    raw = ("\n".join(good[:100] + bad + good[100:]) + "\n").encode() + b'{"text": "caf\xe9"}\n'
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(raw)
    spec = LanguageSpec(name="fr", train=[str(path)])
    out = str(tmp_path / "out")
    cfg = DataConfig(kind="lm", tasks=["fr"], custom_languages=[spec], vocab_size=300, out_dir=out)
    c = prepare(cfg, verbose=False).manifest["tasks"]["fr"]["counts"]
    assert c["invalid"] == {"json": 2, "field": 2, "empty": 1, "utf8": 1}
    assert c["raw"] == 206


# --------------------------------------------------------------------------------------------
# Sampler: packed documents, exact resume
# --------------------------------------------------------------------------------------------


def sampler(prepared, pack: int, **kw) -> MixtureSampler:
    columns = {t: prepared.sequences(t) for t in TASKS}
    kw = dict(batch_tokens=512, seed=3, pack_length=pack) | kw
    return MixtureSampler(columns, {"fra": 0.6, "ron": 0.4}, **kw)


def documents(batch) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """(task, decoder input, labels) of every document of a batch, packed or not."""
    out = []
    for r in range(batch.tgt_out.size(0)):
        seg = batch.tgt_seg[r] if batch.tgt_seg is not None else (batch.tgt_out[r] != PAD).long()
        for k in sorted(set(seg.tolist()) - {0}):
            at = seg == k
            task = int(batch.task_ids[r][at][0])
            inputs, labels = batch.tgt_in[r][at].tolist(), batch.tgt_out[r][at].tolist()
            out.append((task, tuple(inputs), tuple(labels)))
    return out


def test_packed_rows_hold_whole_documents_separated_by_eos(prepared):
    s = sampler(prepared, pack=128)
    for _ in range(5):
        b = s.next_batch()
        inputs = b.model_inputs()
        assert b.src is None and b.src_seg is None
        assert len(inputs) == 2 and inputs[0] is b.tgt_in and inputs[1] is b.tgt_seg
        assert b.tgt_out.shape == (512 // 128, 128)
        docs = documents(b)
        assert sum(len(d[2]) for d in docs) == b.n_tokens == b.real_tokens
        for _, tgt_in, tgt_out in docs:
            assert tgt_out[-1] == EOS and EOS not in tgt_out[:-1]
            assert tgt_in == (BOS, *tgt_out[:-1])  # BOS, then the document shifted
    assert s.accounting()["ron"]["tokens"] > 0


@pytest.mark.parametrize("pack", [0, 128])
@pytest.mark.parametrize("before", [0, 3, 16])  # 16: a pool boundary
def test_sampler_resume_continues_the_exact_stream(prepared, pack, before):
    a = sampler(prepared, pack)
    for _ in range(before):
        a.next_batch()
    state = a.state_dict()
    expected = [documents(a.next_batch()) for _ in range(20)]
    b = sampler(prepared, pack)
    b.load_state_dict(state)
    assert [documents(b.next_batch()) for _ in range(20)] == expected
    assert b.accounting() == a.accounting()


# --------------------------------------------------------------------------------------------
# Model: packing changes nothing; bits per byte by hand
# --------------------------------------------------------------------------------------------


def tiny_lm(prepared, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(preset="tiny", dropout=0.0), prepared.vocab_size).eval()


def test_packed_rows_give_each_documents_losses_alone(prepared):
    model = tiny_lm(prepared)
    batch = sampler(prepared, pack=128).next_batch()
    with torch.no_grad():
        packed = token_losses(model(*batch.model_inputs()), batch.tgt_out)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
        logits = model(*batch.model_inputs())
        assert torch.allclose(compiled(*batch.model_inputs()), logits, atol=1e-5)
        checked = 0
        for r in range(batch.tgt_out.size(0)):
            for k in sorted(set(batch.tgt_seg[r].tolist()) - {0}):
                at = batch.tgt_seg[r] == k
                alone = token_losses(model(batch.tgt_in[r][at][None]), batch.tgt_out[r][at][None])
                torch.testing.assert_close(packed[r][at], alone[0], atol=1e-5, rtol=1e-5)
                checked += 1
    assert checked > 2 * batch.tgt_out.size(0)  # several documents per row


def test_bits_per_byte_by_hand(prepared):
    table = prepared.shard("ron", "dev").slice(0, 12)
    texts, ids = table.column("text").to_pylist(), table.column("ids").to_pylist()
    tokens = sum(len(x) for x in ids)
    n_bytes = sum(len(t.encode("utf-8")) + 1 for t in texts)  # each document's EOS: one byte
    # A model whose embedding is zero predicts every token with probability 1/V.
    uniform = tiny_lm(prepared)
    torch.nn.init.zeros_(uniform.embed.weight)
    got = evaluate_lm(uniform, table, eval_rows=12, batch_tokens=64, device="cpu")
    v = prepared.vocab_size
    assert (got["tokens"], got["bytes"]) == (tokens, n_bytes)
    assert got["ce"] == pytest.approx(math.log(v), rel=1e-6)
    assert got["bpb"] == pytest.approx(tokens * math.log2(v) / n_bytes, rel=1e-6)
    assert got["ppl"] == pytest.approx(v, rel=1e-5)
    # Any model: the summed nats of each document alone, in bits, over the bytes.
    model = tiny_lm(prepared, seed=1)
    with torch.no_grad():
        nats = sum(
            token_losses(model(torch.tensor([[BOS, *x[:-1]]])), torch.tensor([x])).sum().item()
            for x in ids
        )
    got = evaluate_lm(model, table, eval_rows=12, batch_tokens=64, device="cpu")
    assert got["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert got["ce"] == pytest.approx(nats / tokens, rel=1e-5)


# --------------------------------------------------------------------------------------------
# The loop: the prefix invariant, branches, metrics
# --------------------------------------------------------------------------------------------


def pretrain(steps: int = L) -> PhaseConfig:
    return PhaseConfig(steps=steps, mixture=MixtureConfig(rule="explicit", rates={"fra": 1.0}))


def finetune(steps: int = F) -> PhaseConfig:
    mix = MixtureConfig(rule="explicit", rates={"fra": 0.5, "ron": 0.5})
    return PhaseConfig(steps=steps, mixture=mix, reset=True, name="finetune")


def lm_config(data_cfg, run_dir: Path, phases: list[PhaseConfig], **kw) -> TrainConfig:
    base = dict(
        kind="lm",
        phases=phases,
        data=data_cfg,
        model=ModelConfig(preset="tiny", dropout=0.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=4, schedule="rsqrt"),
        eval=EvalConfig(every=1000, pairs=64, test_at_end=False),
        batch_tokens=512,
        pack_length=128,
        run_dir=str(run_dir),
    )
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def runs(lm_data_cfg, tmp_path_factory) -> dict[str, Path]:
    """scratch: [pretrain L, finetune F] with a fork at L; trunk: [pretrain L] alone; branch:
    from the trunk's checkpoint, [finetune F]. Packed rows, as on a GPU."""
    root = tmp_path_factory.mktemp("lm_runs")
    dirs = {name: root / name for name in ("scratch", "trunk", "branch")}
    tested = EvalConfig(every=1000, pairs=64, test_at_end=True)
    phases = [pretrain(), finetune()]
    train.run(lm_config(lm_data_cfg, dirs["scratch"], phases, fork_steps=[L], eval=tested))
    train.run(lm_config(lm_data_cfg, dirs["trunk"], [pretrain()]))
    fork = str(dirs["trunk"] / "checkpoints" / f"step_{L:08d}")
    train.run(lm_config(lm_data_cfg, dirs["branch"], [finetune()], init_from=fork, eval=tested))
    return dirs


def test_checkpoint_at_L_of_a_longer_run_equals_a_run_stopped_at_L(runs):
    longer, shorter = checkpoint(runs["scratch"], L), checkpoint(runs["trunk"], L)
    assert longer["step"] == shorter["step"] == L
    assert_same_weights(longer["model_state"], shorter["model_state"])
    assert longer["sampler"] == shorter["sampler"]
    assert "decoder.0.attn.q.weight" in longer["model_state"]  # the decoder-only model
    assert not any(k.startswith("encoder") for k in longer["model_state"])


def test_branch_equals_the_run_from_scratch(runs):
    branch, scratch = checkpoint(runs["branch"], L + F), checkpoint(runs["scratch"], L + F)
    assert_same_weights(branch["model_state"], scratch["model_state"])
    assert branch["sampler"] == scratch["sampler"]
    b, s = reported(runs["branch"])[L + F], reported(runs["scratch"])[L + F]
    for t in TASKS:
        for key in (f"train/{t}/loss", f"dev/{t}/bpb", f"test/{t}/bpb", f"train/{t}/tokens"):
            assert b[key] == s[key], key


def test_lm_reports_bits_per_byte_perplexity_and_accounting(runs, prepared):
    final = reported(runs["scratch"])[L + F]
    for t in TASKS:
        for split in ("dev", "test"):
            ce, bpb = final[f"{split}/{t}/ce"], final[f"{split}/{t}/bpb"]
            ratio = final[f"{split}/{t}/tokens"] / final[f"{split}/{t}/bytes"]
            assert bpb == pytest.approx(ce * ratio / math.log(2))
            assert final[f"{split}/{t}/ppl"] == pytest.approx(math.exp(ce))
        assert 0 < final[f"train/{t}/loss"] < 10
        epochs = final[f"train/{t}/examples"] / prepared.size(t)
        assert final[f"train/{t}/epochs"] == pytest.approx(epochs)
    assert final["train/ron/realized_rate"] == pytest.approx(0.5, abs=0.1)
    assert "bleu" not in json.dumps(final)
    rows = pq.read_table(runs["scratch"] / "metrics.parquet").to_pandas()
    assert {"bpb", "ppl", "ce"} <= set(rows[rows.split == "dev"].metric)


def test_every_method_plans_and_trains_for_lm(lm_data_cfg, prepared, tmp_path):
    """The five methods' segments of an lm space: their mixtures are rates over the languages'
    rows, and the derived-rate trunks (temperature, UniMax) train through the same loop."""
    space = from_dict(
        SpaceConfig,
        dict(
            name="lm_methods",
            kind="lm",
            tasks={"high": ["fra"], "low": ["ron"]},
            grid={"pretrain_steps": [4], "finetune_steps": 2, "low_rates": [0.5],
                  "temperatures": [2.0], "unimax_epochs": [1.0]},
            methods=["two_phase", "scalarization", "restart", "temperature", "unimax"],
            data=to_dict(lm_data_cfg),
            model={"preset": "tiny", "dropout": 0.0},
            eval={"every": 1000, "pairs": 16, "test_at_end": False},
            batch_tokens=512,
            tokens_per_example=12,
            storage=str(tmp_path),
        ),
    )  # fmt: skip
    tree = plan(space)
    assert {t.method for t in tree.trials} == set(space.methods)
    for seg in tree.segments.values():
        cfg = segment_config(space, seg, str(tmp_path / "sweep"))
        assert cfg.kind == "lm" and cfg.eval.bleu_pairs == 0
        for phase in cfg.phases:
            w = rates(prepared.sizes, phase.mixture)
            assert set(w) == set(TASKS) and sum(w.values()) == pytest.approx(1)
        if seg.id.startswith(("tt-", "um-")):
            final = train.run(cfg)
            assert final["step"] == seg.end_step and final["dev/ron/bpb"] > 0
            assert final["train/ron/realized_rate"] > 0


# --------------------------------------------------------------------------------------------
# Ray Train: two DDP workers take the steps of one
# --------------------------------------------------------------------------------------------


def ray_fit(data_cfg, tmp: Path, workers: int):
    cfg = lm_config(
        data_cfg,
        tmp / "run",
        [finetune(steps=8)],
        eval=EvalConfig(every=4, pairs=32, test_at_end=False),
        resources=ResourcesConfig(num_workers=workers, cpus_per_worker=0.5),
    )
    return fit_on_ray(cfg, tmp, f"lm{workers}")[:2]


def test_two_ddp_workers_match_one(ray_session, lm_data_cfg, tmp_path):
    one, one_state = ray_fit(lm_data_cfg, tmp_path / "one", workers=1)
    two, two_state = ray_fit(lm_data_cfg, tmp_path / "two", workers=2)
    assert_same_weights(one_state["model_state"], two_state["model_state"], atol=1e-5)
    for t in TASKS:
        for key in (f"train/{t}/loss", f"dev/{t}/bpb"):
            assert two.metrics[key] == pytest.approx(one.metrics[key], rel=1e-4), key
        assert two.metrics[f"train/{t}/examples"] == one.metrics[f"train/{t}/examples"]


# --------------------------------------------------------------------------------------------
# The LM smoke sweep on real Ray: results, a frontier in bits per byte, a report
# --------------------------------------------------------------------------------------------


def test_lm_smoke_sweep_results_frontier_and_report(lm_smoke_sweep):
    space = load(SpaceConfig, lm_smoke_sweep / "space.yaml")
    assert space.kind == "lm"
    trials = pd.read_parquet(lm_smoke_sweep / "trials.parquet")
    assert sorted(trials.trial) == sorted(t.id for t in plan(space).trials)
    assert (trials.status == "finished").all(), trials[["trial", "status"]]
    metrics = pd.read_parquet(lm_smoke_sweep / "metrics.parquet")
    dev = metrics[metrics.split == "dev"]
    assert {"ce", "bpb", "ppl"} <= set(dev.metric) and "bleu" not in set(dev.metric)
    assert dev.value.notna().all()
    doc = json.loads((lm_smoke_sweep / "frontier.json").read_text())
    for at in ("best", "final"):
        assert doc[at]["axes"] == ["fra/bpb", "ron/bpb"]
        assert set(doc[at]["methods"]) == {"two_phase", "scalarization"}
        for m in doc[at]["methods"].values():
            assert m["hypervolume"] > 0 and m["front"]
    page = (lm_smoke_sweep / "report" / "index.html").read_text()
    assert "Perplexity of the frontier points" in page and "fra/ppl" in page
    assert "bits per byte" in page
    for name in FIGURES:
        assert (lm_smoke_sweep / "report" / f"{name}.png").stat().st_size > 10_000, name
