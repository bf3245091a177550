"""Bad input to every CLI (prepare, train, tune, report, evaluate): one clear line, exit 2,
nothing torn.

    .venv/bin/python -m pytest -q tests/test_bad_input.py

One table of cases, each run through the real ``main(argv)`` of its CLI (a few as a real
``python -m`` process). Every case must end with exit code 2, exactly one ``error: ...`` line on
stderr naming what is wrong, no traceback, and no half-written file where output would go (no
``*.tmp``, and every Parquet / checkpoint / JSON that did appear reads back whole).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ray_mtl import checkpoint, evaluate, prepare, report, train, tune
from ray_mtl.config import (
    DataConfig,
    EvalConfig,
    MixtureConfig,
    ModelConfig,
    PhaseConfig,
    SpaceConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from ray_mtl.errors import UserError
from ray_mtl.model import Transformer

ROOT = Path(__file__).resolve().parents[1]
MAINS = {"prepare": prepare.main, "train": train.main, "tune": tune.main, "report": report.main}
MAINS["evaluate"] = evaluate.main
TASKS = ["eng-fra", "eng-ron"]


@dataclass
class Ctx:
    tmp: Path
    shared: Path
    data: DataConfig
    cleanup: Callable[[Callable[[], None]], None]

    def write(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return str(path)

    def train_yaml(self, edit: Callable[[dict], None] = lambda c: None) -> str:
        mix = MixtureConfig(rule="explicit", rates={"eng-fra": 0.5, "eng-ron": 0.5})
        cfg = to_dict(
            TrainConfig(
                phases=[PhaseConfig(steps=4, mixture=mix)],
                data=self.data,
                model=ModelConfig(preset="tiny", dropout=0.0),
                eval=EvalConfig(every=2, pairs=16, bleu_pairs=0, test_at_end=False),
                batch_tokens=512,
                run_dir=str(self.tmp / "run"),
            )
        )
        edit(cfg)
        return self.write("run.yaml", yaml.safe_dump(cfg))

    def space_yaml(self, edit: Callable[[dict], None] = lambda s: None) -> str:
        d = self.data
        space = dict(
            name="bad",
            tasks={"high": ["eng-fra"], "low": ["eng-ron"]},
            methods=["two_phase"],
            grid={"pretrain_steps": [4], "finetune_steps": 4, "low_rates": [0.5]},
            data=dict(
                data_dir=d.data_dir, out_dir=d.out_dir, max_pairs=d.max_pairs, vocab_size=500
            ),
            model={"preset": "tiny", "dropout": 0.0},
            eval={"every": 2, "pairs": 16, "bleu_pairs": 0},
            batch_tokens=512,
            storage=str(self.tmp / "runs"),
        )
        edit(space)
        return self.write("space.yaml", yaml.safe_dump(space))

    def tmpfs(self, name: str) -> Path | None:
        """A 64 KiB tmpfs: a really full disk. None where mounting is not allowed."""
        path = self.tmp / name
        path.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)]
        if subprocess.run(mount, capture_output=True).returncode != 0:
            return None
        self.cleanup(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
        return path


def prepare_argv(ctx: Ctx, *extra: str) -> list[str]:
    argv = ["--data-dir", str(ctx.shared), "--max-pairs", "2000", "--vocab-size", "500", "-q"]
    return [*argv, *extra]


def custom_task(ctx: Ctx, train_file: str) -> str:
    task = dict(name="eng-my", src_lang="eng", tgt_lang="ron", train=[train_file])
    return ctx.write("data.yaml", json.dumps({"tasks": ["eng-my"], "custom_tasks": [task]}))


def real_lines(ctx: Ctx, n: int) -> bytes:
    with gzip.open(ctx.shared / "tatoeba/train/eng-ron.tsv.gz", "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def hostile(ctx: Ctx) -> str:
    return f'!!python/object/apply:os.system ["touch {ctx.tmp / "PWNED"}"]\n'


def set_in(d: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d[k]
    d[last] = value


def checkpoint_of(ctx: Ctx, model: ModelConfig) -> str:
    """A real checkpoint dir (weights of ``model``) as training writes it."""
    from ray_mtl.data import prepare as prepare_data

    vocab = prepare_data(ctx.data, verbose=False).vocab_size
    state = dict(
        step=4,
        steps_since_reset=4,
        model=to_dict(model),
        vocab_size=vocab,
        manifest_hash="x",
        model_state=Transformer(model, vocab).state_dict(),
    )
    checkpoint.save_dir(ctx.tmp / "ckpt", state)
    return str(ctx.tmp / "ckpt")


# Each case: (cli, argv, substrings of the error line). A case returns None to skip itself.
Case = tuple[str, list[str], list[str]]

# ----------------------------------------------------------------------------- prepare


def case_prepare_unknown_task(ctx):
    argv = prepare_argv(ctx, "--tasks", "eng-fra,eng-xyz", "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["tasks[1]: unknown task 'eng-xyz'", "eng-ron"]


def case_prepare_task_name_with_slash(ctx):
    argv = prepare_argv(ctx, "--tasks", "../../etc", "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["tasks[0]: expected a name of letters", "'../../etc'"]


def case_prepare_hostile_yaml(ctx):
    argv = prepare_argv(ctx, "--config", ctx.write("data.yaml", hostile(ctx)))
    return "prepare", [*argv, "--out-dir", str(ctx.tmp / "out")], ["data.yaml:1: invalid YAML"]


def case_prepare_gzip_garbage(ctx):
    junk = ctx.write("junk.tsv.gz", b"\x1f\x8b" + random.Random(0).randbytes(4096))
    argv = prepare_argv(ctx, "--config", custom_task(ctx, junk), "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["junk.tsv.gz: cannot read"]


def case_prepare_gzip_truncated(ctx):
    whole = gzip.compress(real_lines(ctx, 500))
    cut = ctx.write("cut.tsv.gz", whole[: len(whole) // 2])
    argv = prepare_argv(ctx, "--config", custom_task(ctx, cut), "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["cut.tsv.gz: cannot read"]


def case_prepare_gzip_corrupt_stream(ctx):
    # A valid gzip header over a damaged deflate stream: zlib's own error, not an OSError.
    whole = bytearray(gzip.compress(real_lines(ctx, 500)))
    whole[40:60] = b"\xff" * 20
    bad = ctx.write("bad.tsv.gz", bytes(whole))
    argv = prepare_argv(ctx, "--config", custom_task(ctx, bad), "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["bad.tsv.gz: cannot read"]


def case_prepare_invalid_utf8_strict(ctx):
    bad = ctx.write("bad.tsv", real_lines(ctx, 3) + b"caf\xe9\tcafea\n")
    cfg = custom_task(ctx, bad)
    argv = prepare_argv(ctx, "--config", cfg, "--strict", "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["bad.tsv:4: invalid UTF-8"]


def case_prepare_utf16_without_bom(ctx):
    lines = real_lines(ctx, 200).decode().encode("utf-16-le")  # no byte-order mark
    argv = prepare_argv(ctx, "--config", custom_task(ctx, ctx.write("u16.tsv", lines)))
    return "prepare", [*argv, "--out-dir", str(ctx.tmp / "out")], ["u16.tsv: NUL bytes", "UTF-16"]


def case_prepare_utf16_cut_mid_character(ctx):
    lines = real_lines(ctx, 200).decode().encode("utf-16")[:-1]
    argv = prepare_argv(ctx, "--config", custom_task(ctx, ctx.write("u16.tsv", lines)))
    argv = [*argv, "--out-dir", str(ctx.tmp / "out")]
    return "prepare", argv, ["u16.tsv: invalid UTF-16", "truncated data"]


def case_prepare_three_columns(ctx):
    # The raw manythings.org export keeps its attribution column.
    lines = real_lines(ctx, 200).replace(b"\n", b"\tCC-BY 2.0 (France) Attribution\n")
    argv = prepare_argv(ctx, "--config", custom_task(ctx, ctx.write("ron.txt", lines)))
    expected = ["ron.txt:1: expected 2 tab-separated columns, found 3", "extra_columns: drop"]
    return "prepare", [*argv, "--out-dir", str(ctx.tmp / "out")], expected


def case_prepare_latin1(ctx):
    with gzip.open(ctx.shared / "tatoeba/train/eng-fra.tsv.gz", "rt") as f:
        latin1 = (line for line in f if not line.isascii() and max(map(ord, line)) < 256)
        lines = "".join(next(latin1) for _ in range(200)).encode("latin-1")
    argv = prepare_argv(ctx, "--config", custom_task(ctx, ctx.write("fra.tsv", lines)))
    expected = ["fra.tsv:1: invalid UTF-8", "so are 200 of its 200 lines"]
    return "prepare", [*argv, "--out-dir", str(ctx.tmp / "out")], expected


def case_prepare_excel_workbook(ctx):
    book = ctx.tmp / "pairs.xlsx"
    with zipfile.ZipFile(book, "w") as z:
        z.writestr("xl/worksheets/sheet1.xml", real_lines(ctx, 50))
    argv = prepare_argv(ctx, "--config", custom_task(ctx, str(book)))
    return "prepare", [*argv, "--out-dir", str(ctx.tmp / "out")], ["pairs.xlsx: a ZIP archive"]


def case_prepare_extra_columns_unknown_value(ctx):
    task = dict(
        name="eng-my", src_lang="eng", tgt_lang="ron", train=["x.tsv"], extra_columns="keep"
    )
    cfg = ctx.write("data.yaml", json.dumps({"tasks": ["eng-my"], "custom_tasks": [task]}))
    argv = prepare_argv(ctx, "--config", cfg, "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["custom_tasks[0].extra_columns: expected 'error' or 'drop'", "'keep'"]


def case_prepare_deeply_nested_yaml(ctx):
    cfg = ctx.write("data.yaml", "tasks: " + "[" * 5000 + "]" * 5000 + "\n")
    argv = prepare_argv(ctx, "--config", cfg, "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["data.yaml: invalid YAML (nested too deeply"]


def case_prepare_unwritable_out_dir(ctx):
    ctx.write("a-file", "not a dir")
    argv = prepare_argv(ctx, "--tasks", "eng-ron", "--out-dir", str(ctx.tmp / "a-file" / "out"))
    return "prepare", argv, ["a-file/out: output dir is not writable"]


def case_prepare_full_out_dir(ctx):
    full = ctx.tmpfs("full")
    if full is None:
        return None
    argv = prepare_argv(ctx, "--tasks", "eng-fra,eng-ron", "--out-dir", str(full))
    return "prepare", argv, ["full/", "no space left on device", "expected"]


# ----------------------------------------------------------------------------- prepare, kind lm


def romanian(ctx: Ctx, n: int) -> list[str]:
    return [line.split(b"\t")[1].decode().strip() for line in real_lines(ctx, n).splitlines()]


def custom_language(ctx: Ctx, train_file: str, **spec) -> str:
    lang = dict(name="my-ron", train=[train_file], **spec)
    doc = {"kind": "lm", "tasks": ["my-ron"], "custom_languages": [lang]}
    return ctx.write("data.yaml", json.dumps(doc))


def jsonl(docs: list) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)


def case_prepare_jsonl_line_not_json_strict(ctx):
    docs = jsonl([{"text": t} for t in romanian(ctx, 2)]) + '{"text": "Bună ziua\n'
    path = ctx.write("docs.jsonl", docs + jsonl([{"text": t} for t in romanian(ctx, 5)]))
    cfg = custom_language(ctx, path)
    argv = prepare_argv(ctx, "--config", cfg, "--strict", "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["docs.jsonl:3: not a JSON object"]


def case_prepare_jsonl_without_the_text_field(ctx):
    path = ctx.write("docs.jsonl", jsonl([{"content": t} for t in romanian(ctx, 50)]))
    argv = prepare_argv(
        ctx, "--config", custom_language(ctx, path), "--out-dir", str(ctx.tmp / "o")
    )
    return "prepare", argv, ["docs.jsonl: no valid document in 50 lines", "field 'text'"]


def case_prepare_jsonl_line_without_the_text_field_strict(ctx):
    docs = [{"text": t} for t in romanian(ctx, 3)] + [{"body": "Salut"}]
    path = ctx.write("docs.jsonl.gz", gzip.compress(jsonl(docs).encode()))
    cfg = custom_language(ctx, path)
    argv = prepare_argv(ctx, "--config", cfg, "--strict", "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["docs.jsonl.gz:4: no string field 'text'"]


def case_prepare_parquet_without_the_text_column(ctx):
    import pyarrow as pa

    path = ctx.tmp / "docs.parquet"
    pq.write_table(pa.table({"body": romanian(ctx, 20)}), path)
    cfg = custom_language(ctx, str(path), text_field="text")
    argv = prepare_argv(ctx, "--config", cfg, "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["docs.parquet: column 'text' not found", "body"]


def case_prepare_language_empty_after_decontamination(ctx):
    path = ctx.write("ro.txt", "".join(t + "\n" for t in romanian(ctx, 300)))
    cfg = custom_language(ctx, path, test=[path])
    argv = prepare_argv(ctx, "--config", cfg, "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["language my-ron (", "ro.txt", "0 training documents left"]


def case_prepare_language_of_unknown_format(ctx):
    path = ctx.write("ro.csv", "".join(t + "\n" for t in romanian(ctx, 30)))
    argv = prepare_argv(ctx, "--config", custom_language(ctx, path), "--out-dir", str(ctx.tmp))
    return "prepare", argv, ["ro.csv: unknown format", ".jsonl.gz"]


def case_prepare_lm_of_a_translation_task(ctx):
    argv = prepare_argv(ctx, "--kind", "lm", "--tasks", "fra,eng-ron", "--out-dir", str(ctx.tmp))
    return "prepare", argv, ["tasks[1]: unknown language 'eng-ron' for kind 'lm'", "ron"]


# ----------------------------------------------------------------------------- train


def case_train_malformed_yaml(ctx):
    return "train", ["--config", ctx.write("run.yaml", "phases: [\n  - steps: 4\n")], ["run.yaml"]


def case_train_hostile_yaml(ctx):
    path = ctx.write("run.yaml", hostile(ctx))
    return "train", ["--config", path], ["run.yaml:1: invalid YAML", "python/object/apply"]


def case_train_integer_of_5000_digits(ctx):
    path = ctx.write("run.yaml", "phases:\n  - steps: 1" + "0" * 5000 + "\n")
    return "train", ["--config", path], ["run.yaml: invalid YAML", "4300 digits"]


def case_train_missing_config(ctx):
    return "train", ["--config", str(ctx.tmp / "nope.yaml")], ["nope.yaml: file not found"]


def case_train_wrong_type(ctx):
    path = ctx.train_yaml(lambda c: set_in(c, "model.d_model", "big"))
    return "train", ["--config", path], ["model.d_model: expected an integer", "'big'"]


def case_train_unknown_key(ctx):
    path = ctx.train_yaml(lambda c: set_in(c, "optim.learning_rate", 0.1))
    return "train", ["--config", path], ["optim.learning_rate: unknown field", "lr"]


def case_train_rates_not_summing_to_one(ctx):
    path = ctx.train_yaml(
        lambda c: set_in(
            c,
            "phases",
            [
                {
                    "steps": 4,
                    "mixture": {"rule": "explicit", "rates": {"eng-fra": 0.5, "eng-ron": 0.3}},
                }
            ],
        )
    )
    return "train", ["--config", path], ["phases[0].mixture.rates: expected rates summing to 1"]


def case_train_zero_steps(ctx):
    path = ctx.train_yaml(lambda c: set_in(c, "phases", [{"steps": 0}]))
    return "train", ["--config", path], ["phases[0].steps: expected a positive integer", "0"]


def case_train_unknown_task_in_rates(ctx):
    path = ctx.train_yaml(
        lambda c: set_in(
            c, "phases", [{"steps": 4, "mixture": {"rule": "explicit", "rates": {"eng-xyz": 1.0}}}]
        )
    )
    return "train", ["--config", path], ["phases[0].mixture", "eng-xyz", "unknown task"]


def case_train_zero_workers(ctx):
    return "train", ["--config", ctx.train_yaml(), "--num-workers", "0"], ["--num-workers"]


def case_train_missing_checkpoint(ctx):
    argv = ["--config", ctx.train_yaml(), "--init-from", str(ctx.tmp / "no-ckpt")]
    return "train", argv, ["no-ckpt: no checkpoint there"]


def case_train_corrupt_checkpoint(ctx):
    # Not a pickle, though it starts like one of protocol 206: torch warns, then fails (random
    # bytes did so once in 256 runs).
    ctx.write("ckpt/state.pt", b"\x80\xce" + bytes(range(256)) * 8)
    argv = ["--config", ctx.train_yaml(), "--init-from", str(ctx.tmp / "ckpt")]
    return "train", argv, ["ckpt: corrupt checkpoint"]


def case_train_checkpoint_of_another_model(ctx):
    other = checkpoint_of(ctx, ModelConfig(preset="tiny", d_model=32, dropout=0.0))
    argv = ["--config", ctx.train_yaml(), "--init-from", other]
    return "train", argv, ["checkpoint is for another model config", "d_model"]


def case_train_checkpoint_of_other_data(ctx):
    other = checkpoint_of(ctx, ModelConfig(preset="tiny", dropout=0.0))  # manifest hash "x"
    argv = ["--config", ctx.train_yaml(), "--init-from", other]
    return "train", argv, ["checkpoint was trained on other prepared data", "manifest hash x,"]


def case_train_unwritable_run_dir(ctx):
    ctx.write("a-file", "not a dir")
    argv = ["--config", ctx.train_yaml(), "--run-dir", str(ctx.tmp / "a-file" / "run")]
    return "train", argv, ["a-file/run: run dir is not writable"]


# ----------------------------------------------------------------------------- tune


def case_tune_hostile_yaml(ctx):
    return "tune", ["--space", ctx.write("space.yaml", hostile(ctx))], ["space.yaml:1: invalid"]


def case_tune_sweep_name_with_dotdot(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "name", "../../escape"))
    return "tune", ["--space", path], ["name: expected a name of letters", "'../../escape'"]


def case_tune_sweep_name_with_slash(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "name", "a/b"))
    return "tune", ["--space", path], ["name: expected a name", "no '/' or '..'"]


def case_tune_task_name_with_slash(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "tasks.low", ["eng/../ron"]))
    return "tune", ["--space", path], ["tasks.low[0]: expected a name"]


def case_tune_negative_steps(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "grid.finetune_steps", -5))
    return "tune", ["--space", path], ["grid.finetune_steps: expected a positive integer", "-5"]


def case_tune_wrong_type(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "grid.low_rates", "0.5"))
    return "tune", ["--space", path], ["grid.low_rates: expected a list of", "'0.5'"]


def case_tune_rate_out_of_range(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "grid.low_rates", [1.5]))
    return "tune", ["--space", path], ["grid.low_rates[0]: expected a rate in (0, 1)", "1.5"]


def case_tune_pack_length_shorter_than_pairs(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "pack_length", 32))
    return "tune", ["--space", path], ["pack_length: expected 0 or from data.max_len=128", "32"]


def case_train_pack_length_beyond_positions(ctx):
    path = ctx.train_yaml(lambda c: set_in(c, "pack_length", 512))
    return "train", ["--config", path], ["pack_length: expected", "model.max_len=128", "512"]


def lm_space(s: dict) -> None:
    s.update(kind="lm", tasks={"high": ["fra"], "low": ["ron"]})


def case_tune_lm_with_a_beam(ctx):
    path = ctx.space_yaml(lambda s: (lm_space(s), set_in(s, "eval.beam_size", 4)))
    return "tune", ["--space", path], ["eval.beam_size: expected 1 for kind 'lm'", "got 4"]


def case_tune_lm_with_bleu_pairs(ctx):
    path = ctx.space_yaml(lambda s: (lm_space(s), set_in(s, "eval.bleu_pairs", 50)))
    return "tune", ["--space", path], ["eval.bleu_pairs: expected unset or 0 for kind 'lm'", "50"]


def case_tune_lm_with_custom_tasks(ctx):
    task = dict(name="eng-my", src_lang="eng", tgt_lang="ron", train=[str(ctx.tmp / "x.tsv")])
    path = ctx.space_yaml(lambda s: (lm_space(s), set_in(s, "data.custom_tasks", [task])))
    return "tune", ["--space", path], ["data.custom_tasks: expected none for kind 'lm'", "eng-my"]


def case_tune_lm_with_a_translation_task(ctx):
    path = ctx.space_yaml(lambda s: (lm_space(s), set_in(s, "tasks.low", ["eng-ron"])))
    return "tune", ["--space", path], ["tasks.low[0]: unknown task 'eng-ron' for kind 'lm'", "ind"]


def case_tune_unknown_kind(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "kind", "mlm"))
    return "tune", ["--space", path], ["kind: expected 'translation' or 'lm'", "'mlm'"]


def case_tune_unknown_key(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "grid.pretrain_step", [4]))
    return "tune", ["--space", path], ["grid.pretrain_step: unknown field", "pretrain_steps"]


def case_tune_unknown_task(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "tasks.low", ["eng-xyz"]))
    return "tune", ["--space", path], ["unknown task 'eng-xyz'"]


def case_tune_low_rates_with_one_id(ctx):
    # Both would be trials "...-w0.3-s0": their results would merge.
    path = ctx.space_yaml(lambda s: set_in(s, "grid.low_rates", [0.3, 0.3000001]))
    expected = ["grid.low_rates[1]: expected values distinct in trial ids", "0.3000001", "'0.3'"]
    return "tune", ["--space", path], expected


def case_tune_duplicate_temperatures(ctx):
    def edit(s):
        s["methods"] = ["temperature"]
        s["grid"] |= {"low_rates": [], "temperatures": [2, 5, 2.0]}

    path = ctx.space_yaml(edit)
    return "tune", ["--space", path], ["grid.temperatures[2]: expected values distinct", "[0]=2.0"]


def case_tune_train_pairs_of_an_unknown_task(ctx):
    def edit(s):
        s["data"] = {**s.get("data", {}), "train_pairs": {"eng-deu": 500}}

    path = ctx.space_yaml(edit)
    expected = ["data.train_pairs.eng-deu: expected one of ['eng-fra', 'eng-ron']"]
    return "tune", ["--space", path], expected


def case_prepare_eval_set_missing_file(ctx):
    sets = {"eng-ron": {"flores": str(ctx.tmp / "flores.tsv")}}
    data = ctx.write("data.yaml", json.dumps({"tasks": TASKS, "eval_sets": sets}))
    argv = prepare_argv(ctx, "--config", data, "--out-dir", str(ctx.tmp / "out"))
    return "prepare", argv, ["eval_sets.eng-ron.flores:", "flores.tsv: file not found"]


def case_tune_eval_set_named_test(ctx):
    def edit(s):
        s["data"] |= {"eval_sets": {"eng-ron": {"test": "flores.tsv"}}}

    expected = ["data.eval_sets.eng-ron: expected a name other than train, dev, test", "'test'"]
    return "tune", ["--space", ctx.space_yaml(edit)], expected


def case_tune_eval_sets_of_an_unknown_task(ctx):
    def edit(s):
        s["data"] |= {"eval_sets": {"eng-deu": {"flores": "flores.tsv"}}}

    expected = ["data.eval_sets.eng-deu: expected one of ['eng-fra', 'eng-ron']"]
    return "tune", ["--space", ctx.space_yaml(edit)], expected


def case_tune_unreachable_mlflow_server(ctx):
    def edit(s):
        s["tracking"] = {"mlflow": "http://127.0.0.1:9"}

    path = ctx.space_yaml(edit)
    expected = ["tracking.mlflow: cannot reach the tracking server http://127.0.0.1:9"]
    return "tune", ["--space", path], expected


def case_tune_duplicate_unimax_epochs(ctx):
    def edit(s):
        s["methods"] = ["unimax"]
        s["grid"] |= {"low_rates": [], "unimax_epochs": [1.0, 1.0]}

    path = ctx.space_yaml(edit)
    return "tune", ["--space", path], ["grid.unimax_epochs[1]: expected values distinct"]


def alias_bomb(levels: int = 6) -> str:
    """``name:`` lists nine wide, ``levels`` deep, in 400 bytes: 9 ** (levels + 1) strings once
    the aliases are expanded (4.8 million at 6, whose repr was a 39 MB error line; each level
    more is nine times that, and the error is the same short line)."""
    rows = ["  - &a0 [" + ", ".join(['"lol"'] * 9) + "]"]
    rows += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "name:\n" + "\n".join(rows) + "\n"


def case_tune_alias_bomb(ctx):
    space = yaml.safe_load(Path(ctx.space_yaml()).read_text())
    del space["name"]
    path = ctx.write("space.yaml", alias_bomb() + yaml.safe_dump(space))
    assert Path(path).stat().st_size < 1500
    return "tune", ["--space", path], ["space.yaml: name: too large", "YAML aliases"]


def case_tune_name_of_a_million_characters(ctx):
    path = ctx.space_yaml(lambda s: set_in(s, "name", "a" * 1_000_000))
    return "tune", ["--space", path], ["name: expected a string of at most 4,096 characters"]


def case_tune_resume_not_a_sweep(ctx):
    (ctx.tmp / "empty").mkdir()
    argv = ["--resume", str(ctx.tmp / "empty")]
    return "tune", argv, ["empty/space.yaml: not found", "sweep dir written by ray_mtl.tune"]


def case_tune_new_sweep_over_an_old_one(ctx):
    # Its segments' checkpoints would be taken up as if the new sweep resumed them.
    old = ctx.tmp / "runs" / "bad"
    old.mkdir(parents=True)
    (old / "plan.json").write_text("{}")
    return "tune", ["--space", ctx.space_yaml()], ["a sweep is already there", "--overwrite"]


def case_tune_unwritable_storage(ctx):
    ctx.write("a-file", "not a dir")
    argv = ["--space", ctx.space_yaml(), "--storage", str(ctx.tmp / "a-file" / "runs")]
    return "tune", argv, ["a-file/runs: storage path is not writable"]


# ----------------------------------------------------------------------------- report


def toy_sweep(ctx: Ctx) -> str:
    """The smallest sweep dir a report can be drawn from: one trial, one segment."""
    import pyarrow as pa

    sweep = ctx.tmp / "sweep"
    rows = [
        dict(segment="sc", step=s, task=t, split="dev", metric="ce", value=5.0 - s / 10 - i)
        for s in (2, 4)
        for i, t in enumerate(TASKS)
    ]
    sweep.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), sweep / "metrics.parquet")
    trial = dict(
        trial="sc-w0.5-s0", method="scalarization", L=0, F=4, w=0.5, temperature=float("nan"),
        max_epochs=float("nan"), seed=0, final_step=4, status="finished", manifest_hash="m",
        code_version="c", lineage=json.dumps([dict(segment="sc", from_step=0, to_step=4)]),
    )  # fmt: skip
    pq.write_table(pa.Table.from_pylist([trial]), sweep / "trials.parquet")
    space = {"name": "toy", "tasks": {"high": ["eng-fra"], "low": ["eng-ron"]}}
    (sweep / "space.yaml").write_text(yaml.safe_dump(space))
    (sweep / "results.json").write_text(json.dumps({"schema": 1, "name": "toy"}))
    return str(sweep)


def case_report_missing_sweep(ctx):
    return "report", [str(ctx.tmp / "nowhere")], ["nowhere: sweep dir not found"]


def case_report_corrupt_parquet(ctx):
    sweep = toy_sweep(ctx)
    Path(sweep, "metrics.parquet").write_bytes(b"PAR1" + random.Random(0).randbytes(512))
    return "report", [sweep], ["metrics.parquet: cannot read Parquet"]


def case_report_hostile_space_yaml(ctx):
    sweep = toy_sweep(ctx)
    Path(sweep, "space.yaml").write_text(hostile(ctx))
    return "report", [sweep], ["space.yaml:1: invalid YAML"]


def case_report_bad_axis(ctx):
    return "report", [toy_sweep(ctx), "--axes", "eng-ron"], ["'eng-ron': expected 'task/metric'"]


def case_report_unwritable_out(ctx):
    ctx.write("a-file", "not a dir")
    argv = [toy_sweep(ctx), "--out", str(ctx.tmp / "a-file" / "r" / "report")]
    return "report", argv, ["a-file/r: report dir is not writable"]


def case_report_full_out_dir(ctx):
    sweep = toy_sweep(ctx)
    full = ctx.tmpfs("full")
    if full is None:
        return None
    return "report", [sweep, "--out", str(full / "report")], ["no space left on device"]


def case_report_out_holds_other_files(ctx):
    ctx.write("mine/notes.txt", "the user's own file")
    argv = [toy_sweep(ctx), "--out", str(ctx.tmp / "mine")]
    return "report", argv, ["--out holds files the report did not write (notes.txt)"]


def case_report_out_is_the_sweep(ctx):
    sweep = toy_sweep(ctx)
    return "report", [sweep, "--out", sweep], ["--out holds files the report did not write"]


def case_evaluate_a_trial_without_saved_weights(ctx):
    argv = [toy_sweep(ctx), "--task", "eng-ron", "--file", ctx.write("new.tsv", "Hi.\tSalut.\n")]
    expected = ["trial sc-w0.5-s0: no saved weights to score", "end_00000004.json"]
    return "evaluate", argv, expected


def case_evaluate_an_unknown_trial(ctx):
    argv = [toy_sweep(ctx), "--task", "eng-ron", "--file", "new.tsv", "--trials", "sc-w0.9-s0"]
    return "evaluate", argv, ["--trials: unknown trial 'sc-w0.9-s0'", "sc-w0.5-s0"]


def case_evaluate_an_unknown_task(ctx):
    argv = [toy_sweep(ctx), "--task", "eng-deu", "--file", "new.tsv"]
    return "evaluate", argv, ["--task: expected one of eng-fra, eng-ron, got 'eng-deu'"]


def case_tune_unreachable_storage(ctx):
    from conftest import free_port

    uri = f"s3://b/runs?endpoint_override=127.0.0.1:{free_port()}&scheme=http"
    argv = ["--space", ctx.space_yaml(), "--storage", uri]
    return "tune", argv, ["s3://b/runs/bad?endpoint_override=", "cannot reach storage"]


CASES = [v for k, v in globals().items() if k.startswith("case_")]
# These also run as real processes: exit status, stderr and no code run from YAML.
SUBPROCESS = {
    "case_tune_hostile_yaml",
    "case_tune_alias_bomb",
    "case_train_corrupt_checkpoint",
    "case_report_full_out_dir",
}
# One short line: a value is shown cut (an alias bomb's full repr is gigabytes).
MAX_ERROR = 600


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()} if path.exists() else set()


def assert_whole(path: Path) -> None:
    """A file that appeared must read back whole."""
    assert ".tmp" not in str(path) and ".old" not in path.name, f"left behind: {path}"
    if path.suffix == ".parquet":
        pq.read_table(path)
    elif path.suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".json":
        json.loads(path.read_text())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_bad_input_is_refused(case, data_cfg, shared_data, tmp_path, capsys, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp_path, shared_data, data_cfg, request.addfinalizer)
    made = case(ctx)
    if made is None:
        pytest.skip("cannot mount a small tmpfs here")
    cli, argv, expected = made
    before = files_under(tmp_path) | files_under(Path(data_cfg.out_dir))
    if case.__name__ in SUBPROCESS:
        proc = subprocess.run(
            [sys.executable, "-m", f"ray_mtl.{cli}", *argv],
            cwd=tmp_path,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        rc, err = proc.returncode, proc.stderr
    else:
        rc = MAINS[cli](argv)
        err = capsys.readouterr().err
    assert rc == 2, err
    # One error line, last; before it at most the data pipeline's "prepare: ..." progress lines.
    *progress, line = err.rstrip("\n").split("\n")
    assert line.startswith("error: ") and err.endswith("\n"), err
    assert all(p.startswith("prepare: ") for p in progress), err
    assert "Traceback" not in err
    assert len(line) <= MAX_ERROR, f"{len(line):,} characters: {line[:MAX_ERROR]}..."
    err = line
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not (tmp_path / "PWNED").exists(), "YAML ran a command"
    for path in (files_under(tmp_path) | files_under(Path(data_cfg.out_dir))) - before:
        assert_whole(path)
    for prepared in tmp_path.glob("**/prepared/*"):
        assert (prepared / "manifest.json").is_file(), f"partial prepared dir: {prepared}"


def test_a_value_in_an_error_is_shown_cut():
    """Not only from YAML: a value of shared lists (as Ray or a caller may pass) is shown cut,
    without building its full repr (here 9**8 strings)."""
    bomb: list = ["lol"] * 9
    for _ in range(7):
        bomb = [bomb] * 9
    with pytest.raises(UserError) as e:
        from_dict(SpaceConfig, {"name": bomb, "tasks": {}, "grid": {}}, "space.yaml")
    assert str(e.value).startswith("space.yaml: name: expected a string, got [[[")
    assert len(str(e.value)) <= MAX_ERROR
