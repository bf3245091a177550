"""Bad input to ``python -m ray_mtl.prepare``: one clear line, exit 2, no partial output.

.venv/bin/python -m pytest -q tests/test_prepare_errors.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ray_mtl.prepare import main

ROOT = Path(__file__).resolve().parents[1]


def real_lines(shared_data: Path, n: int, split: str = "train") -> bytes:
    with gzip.open(shared_data / f"tatoeba/{split}/eng-ron.tsv.gz", "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def custom(tmp: Path, train: list[str], test: list[str], **spec) -> list[str]:
    task = dict(name="eng-my", src_lang="eng", tgt_lang="ron", train=train, test=test) | spec
    cfg = tmp / "data.yaml"
    cfg.write_text(json.dumps({"tasks": [task["name"]], "custom_tasks": [task]}))
    return ["--config", str(cfg)]


def case_missing_file(tmp, shared):
    return custom(tmp, [str(tmp / "nope.tsv")], []), ["nope.tsv: file not found"]


def case_empty_file(tmp, shared):
    (tmp / "empty.tsv").write_bytes(b"")
    return custom(tmp, [str(tmp / "empty.tsv")], []), ["empty.tsv: empty file"]


def case_wrong_columns_strict(tmp, shared):
    (tmp / "bad.tsv").write_bytes(real_lines(shared, 2) + b"a\tb\tc\n" + real_lines(shared, 50))
    argv = [*custom(tmp, [str(tmp / "bad.tsv")], []), "--strict"]
    return argv, ["bad.tsv:3: expected 2 tab-separated columns"]


def case_invalid_utf8_strict(tmp, shared):
    (tmp / "bad.tsv").write_bytes(real_lines(shared, 1) + b"caf\xe9\tcafea\n")
    argv = [*custom(tmp, [str(tmp / "bad.tsv")], []), "--strict"]
    return argv, ["bad.tsv:2: invalid UTF-8"]


def case_no_train_left(tmp, shared):
    (tmp / "both.tsv").write_bytes(real_lines(shared, 100))
    argv = custom(tmp, [str(tmp / "both.tsv")], [str(tmp / "both.tsv")])
    return argv, ["task eng-my: 0 training pairs left", "dev or test"]


def case_duplicate_task_names(tmp, shared):
    return ["--tasks", "eng-ron,eng-ron"], ["tasks: expected distinct names"]


def case_duplicate_custom_names(tmp, shared):
    task = dict(name="eng-my", src_lang="eng", tgt_lang="ron", train=["x.tsv"])
    (tmp / "data.yaml").write_text(json.dumps({"tasks": ["eng-my"], "custom_tasks": [task, task]}))
    return ["--config", str(tmp / "data.yaml")], ["custom_tasks: expected distinct task names"]


def case_unknown_task(tmp, shared):
    return ["--tasks", "eng-ron,eng-xyz"], ["tasks[1]: unknown task 'eng-xyz'", "eng-ron"]


def case_bad_language_tag(tmp, shared):
    argv = custom(tmp, ["x.tsv"], [], tgt_lang="r0n")
    return argv, ["data.yaml: custom_tasks[0].tgt_lang: expected a language code", "'r0n'"]


def case_unwritable_out_dir(tmp, shared):
    (tmp / "a-file").write_text("not a dir")
    # Runs as root here, so a chmod'ed dir would still be writable: use a path under a file.
    return ["--tasks", "eng-ron", "--out-dir", str(tmp / "a-file" / "out")], [
        "a-file/out: output dir is not writable"
    ]


def case_missing_data_dir(tmp, shared):
    return ["--data-dir", str(tmp / "nodata")], ["nodata: data dir not found"]


def case_data_root_missing_a_file(tmp, shared):
    root = tmp / "root"
    for split in ("train", "test"):
        (root / "tatoeba" / split).mkdir(parents=True)
        shutil.copy(shared / f"tatoeba/{split}/eng-ron.tsv.gz", root / "tatoeba" / split)
    argv = ["--data-dir", str(root), "--tasks", "eng-ron,eng-fra"]
    return argv, [f"tatoeba/train/eng-fra.tsv.gz: not found; looked in: --data-dir {root} ("]


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_bad_input(case, shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = case(tmp_path, shared_data)
    if "--out-dir" not in argv:
        argv += ["--out-dir", str(tmp_path / "out")]
    if "--data-dir" not in argv:
        argv += ["--data-dir", str(shared_data)]
    rc = main([*argv, "--max-pairs", "2000", "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    out = tmp_path / "out"
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith(".parquet")]
    assert leftovers == [] and not (out / "prepared").exists()


def test_cli_subprocess_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ray_mtl.prepare", "--tasks", "eng-zzz", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown task 'eng-zzz'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_names_every_place_looked_in(lone_clone, tmp_path, capsys):
    """No --data-dir, no ../shared/data, slices too short for the run, an empty cache, nothing
    pinned to download with: the error names the file and each place, and writes nothing."""
    repo = lone_clone
    rc = main(["--tasks", "eng-fra", "--out-dir", str(tmp_path / "out"), "-q"])  # all of eng-fra
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    shared = tmp_path / "ws" / "shared" / "data"
    for text in [
        "error: tatoeba/train/eng-fra.tsv.gz: not found; looked in: ",
        f"../shared/data ({shared}: absent); ",
        f"the in-repo slices {repo / 'data'} (tatoeba/train/eng-fra.tsv.gz holds the first 20,000 "
        "of its 167,130 lines, and no max_pairs asks for more); ",
        f"the cache {tmp_path / 'cache' / 'data'} (not there, and no sha256 pinned for "
        "https://www.manythings.org/anki/fra-eng.zip and ",
        f"{tmp_path / 'cache' / 'data' / 'checksums.json'}",
        "or point --data-dir / RAY_MTL_DATA at a root that holds it",
    ]:
        assert text in err, err
    assert not (tmp_path / "cache").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
