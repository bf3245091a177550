"""The data pipeline on real slices of the shipped Tatoeba pairs.

.venv/bin/python -m pytest -q tests/test_data.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import unicodedata
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ray_mtl.config import DataConfig, TaskSpec
from ray_mtl.data import BOS, EOS, PAD, UNK, Prepared, load_prepared, prepare, table
from ray_mtl.data.catalog import REPO_DATA, SLICES, data_dir
from ray_mtl.data.corpus import normalise, read_pairs
from ray_mtl.data.download import Unpinned, fetch, fetch_tatoeba, sha256_file
from ray_mtl.data.prepared import SPLITS
from ray_mtl.data.splits import make_splits
from ray_mtl.data.tokenizer import balanced_sample
from ray_mtl.errors import UserError
from ray_mtl.prepare import main

TASKS = ["eng-fra", "eng-ron", "eng-ind"]
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT / ".." / "shared" / "data"


def small_cfg(shared_data: Path, out: Path, **kw) -> DataConfig:
    kw = (
        dict(
            tasks=TASKS,
            data_dir=str(shared_data),
            out_dir=str(out),
            max_pairs=3000,
            vocab_size=800,
            tokenizer_sample=20_000,
        )
        | kw
    )
    return DataConfig(**kw)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prep")


@pytest.fixture(scope="module")
def data(shared_data, out) -> Prepared:
    return prepare(small_cfg(shared_data, out), verbose=False)


def texts(data: Prepared, task: str, split: str) -> tuple[set[str], set[str]]:
    t = data.shard(task, split)
    return set(t.column("src_text").to_pylist()), set(t.column("tgt_text").to_pylist())


def test_no_overlap_between_splits(data):
    for task in TASKS:
        train_src, train_tgt = texts(data, task, "train")
        dev_src, dev_tgt = texts(data, task, "dev")
        test_src, test_tgt = texts(data, task, "test")
        assert train_src and dev_src and test_src
        assert not train_src & (dev_src | test_src), task
        assert not train_tgt & (dev_tgt | test_tgt), task
        assert not dev_src & test_src and not dev_tgt & test_tgt, task
        assert all(normalise(s) == s for s in train_src | train_tgt)


def test_manifest_counts_add_up(data):
    m = data.manifest
    assert data.tasks == TASKS
    for task in TASKS:
        c = m["tasks"][task]["counts"]
        parts = sum(c["invalid"].values()) + sum(
            c[k] for k in ("duplicate", "decontaminated", "too_long", "train", "dev", "test")
        )
        assert c["raw"] == parts == 6000, (task, c)
        files = m["tasks"][task]["files"]
        assert sum(f["lines"] for fs in files.values() for f in fs) == c["raw"]
        assert all(f["sha256"] == sha256_file(f["path"]) for fs in files.values() for f in fs)
        for split in SPLITS:
            assert data.shard(task, split).num_rows == c[split]
        assert data.size(task) == c["train"]
        assert c["decontaminated"] > 0  # Tatoeba train and test overlap (see data README)
    assert m["tokenizer"]["hash"] and len(data.manifest_hash) == 64
    again = load_prepared(data.root)
    assert again.manifest_hash == data.manifest_hash and again.tasks == TASKS
    text = table(data)
    assert all(t in text for t in TASKS) and "decontaminated" in text


def test_shards_and_tokenizer_round_trip(data):
    sp = data.tokenizer()
    assert data.tokenizer() is sp
    assert [sp.id_to_piece(i) for i in (PAD, UNK, BOS, EOS)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert data.vocab_size == sp.get_piece_size() == 800
    for task in TASKS:
        t = data.shard(task, "dev")
        assert t.schema.field("src").type == pa.list_(pa.int32())
        assert t.schema.field("tgt").type == pa.list_(pa.int32())
        tag = data.lang_tag_id(task)
        assert sp.id_to_piece(tag) == f"<2{task[4:]}>"
        src, tgt = t.column("src").to_pylist(), t.column("tgt").to_pylist()
        assert all(s[0] == tag and s[-1] == EOS and len(s) <= 128 for s in src)
        assert all(x[-1] == EOS and tag not in x for x in tgt)
        text = t.column("src_text").to_pylist() + t.column("tgt_text").to_pylist()
        ok = sum(data.decode(ids) == x for ids, x in zip(src + tgt, text, strict=True))
        assert ok >= 0.98 * 2 * t.num_rows, (task, ok, t.num_rows)
    assert data.decode([BOS, tag, 20, 21, EOS, 22, PAD]) == sp.decode([20, 21])


def test_cached_rerun_rebuilds_nothing(data, shared_data, out, capsys):
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = prepare(small_cfg(shared_data, out))
    assert again.root == data.root and again.built == []
    assert "nothing to rebuild" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_change_rebuilds_only_what_it_affects(data, shared_data, out, tmp_path):
    longer = prepare(small_cfg(shared_data, out, max_len=64), verbose=False)
    assert sorted(longer.built) == [f"encode:{t}" for t in sorted(TASKS)]
    assert longer.manifest["tokenizer"]["hash"] == data.manifest["tokenizer"]["hash"]

    # eng-ind with a smaller test file: only its splits, the tokenizer and the shards change.
    test = tmp_path / "ind-test.tsv"
    with gzip.open(shared_data / "tatoeba/test/eng-ind.tsv.gz", "rt") as f:
        test.write_text("".join(f.readlines()[:500]))
    ind = TaskSpec(
        "eng-ind", "eng", "ind", [str(shared_data / "tatoeba/train/eng-ind.tsv.gz")], [str(test)]
    )
    changed = prepare(small_cfg(shared_data, out, custom_tasks=[ind]), verbose=False)
    assert "clean:eng-ind" in changed.built and "tokenizer" in changed.built
    assert not {"clean:eng-fra", "clean:eng-ron"} & set(changed.built)
    assert (
        changed.root != data.root and changed.manifest["tasks"]["eng-ind"]["counts"]["test"] <= 500
    )
    assert load_prepared(data.root).manifest_hash == data.manifest_hash  # the old one is intact


def test_load_prepared_refuses_missing_or_corrupt(data, tmp_path):
    with pytest.raises(UserError, match=r"manifest\.json not found"):
        load_prepared(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(data.root, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["tasks"]["eng-ron"]["counts"]["train"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="corrupt"):
        load_prepared(copy)
    with pytest.raises(UserError, match="split"):
        data.shard("eng-ron", "valid")


def test_custom_parquet_task_through_cli(shared_data, tmp_path, capsys):
    def parquet(src: Path, n: int, dest: Path) -> str:
        pairs, _ = read_pairs(src, max_lines=n)
        pq.write_table(pa.table({"en": [s for s, _ in pairs], "ro": [t for _, t in pairs]}), dest)
        return str(dest)

    cfg = {
        "tasks": ["ron-custom"],
        "vocab_size": 300,
        "custom_tasks": [
            {
                "name": "ron-custom",
                "src_lang": "eng",
                "tgt_lang": "ron",
                "src_column": "en",
                "tgt_column": "ro",
                "train": [
                    parquet(
                        shared_data / "tatoeba/train/eng-ron.tsv.gz",
                        2000,
                        tmp_path / "train.parquet",
                    )
                ],
                "test": [
                    parquet(
                        shared_data / "tatoeba/test/eng-ron.tsv.gz", 300, tmp_path / "test.parquet"
                    )
                ],
            }
        ],
    }
    (tmp_path / "data.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    rc = main(["--config", str(tmp_path / "data.yaml"), "--out-dir", str(tmp_path / "out"), "-q"])
    stdout = capsys.readouterr().out
    assert rc == 0 and "ron-custom" in stdout and "prepared: " in stdout
    root = Path(stdout.split("prepared: ")[1].split()[0])
    assert load_prepared(root).size("ron-custom") > 1000


def test_read_pairs_validates_and_normalises(tmp_path):
    f = tmp_path / "mixed.tsv"
    f.write_bytes(
        "Caf\u0065\u0301  ok.\tCafé\u00a0 ok. \n".encode()
        + b"one column\n"
        + b"a\tb\tc\n"
        + b"\xff\xfe\tx\n"
        + b" \tempty source\n"
        + b"fine\tbine\r\n"
    )
    pairs, stats = read_pairs(f)
    assert pairs == [("Café ok.", "Café ok."), ("fine", "bine")]
    assert unicodedata.is_normalized("NFC", pairs[0][0])
    assert stats.lines == 6 and dict(stats.invalid) == {"columns": 2, "utf8": 1, "empty": 1}
    with pytest.raises(UserError, match=r"mixed.tsv:2: expected 2 tab-separated columns"):
        read_pairs(f, strict=True)
    assert read_pairs(f, max_lines=1)[1].lines == 1


def test_balanced_sample_favours_low_resource():
    by_lang = {"fra": [f"f{i}" for i in range(10_000)], "ron": [f"r{i}" for i in range(500)]}
    sample, taken = balanced_sample(by_lang, size=2000, temperature=5, seed=0)
    assert len(set(sample)) == len(sample) == sum(taken.values())
    assert taken["ron"] / len(sample) > 2 * 500 / 10_500  # more than its proportional share


def test_download_only_with_pinned_checksums(shared_data, tmp_path):
    # A manythings-style zip (english, target, attribution) and a Tatoeba-Challenge test file,
    # both made from real shipped lines, served by file:// URLs.
    with gzip.open(shared_data / "tatoeba/train/eng-ron.tsv.gz", "rt") as f:
        train = f.readlines()[:200]
    with gzip.open(shared_data / "tatoeba/test/eng-ron.tsv.gz", "rt") as f:
        test = f.readlines()[:50]
    web = tmp_path / "web"
    (web / "test" / "eng-ron").mkdir(parents=True)
    with zipfile.ZipFile(web / "ron-eng.zip", "w") as z:
        z.writestr(
            "ron.txt", "".join(line.rstrip("\n") + "\tCC-BY 2.0 (France)\n" for line in train)
        )
    (web / "test" / "eng-ron" / "test.txt").write_text("".join(f"eng\tron\t{x}" for x in test))
    zip_url, test_url = (web / "ron-eng.zip").as_uri(), (web / "test/eng-ron/test.txt").as_uri()
    urls = dict(base=web.as_uri(), test_base=(web / "test").as_uri())

    # Unpinned: refused before anything is fetched, with the file to pin the hash in.
    root = tmp_path / "data"
    root.mkdir()
    unpinned = rf"no sha256 pinned for {zip_url} and {test_url}, .* {root / 'checksums.json'}"
    with pytest.raises(Unpinned, match=unpinned):
        fetch_tatoeba("ron", root, **urls)
    assert list(root.iterdir()) == []

    # Pinned by hand: fetched, converted, and equal to the lines it came from.
    pins = {
        zip_url: sha256_file(web / "ron-eng.zip"),
        test_url: sha256_file(web / "test/eng-ron/test.txt"),
    }
    (root / "checksums.json").write_text(json.dumps(pins))
    fetch_tatoeba("ron", root, **urls)
    got, _ = read_pairs(root / "tatoeba/train/eng-ron.tsv.gz")
    assert got == read_pairs(shared_data / "tatoeba/train/eng-ron.tsv.gz", max_lines=200)[0]
    got, _ = read_pairs(root / "tatoeba/test/eng-ron.tsv.gz")
    assert got == read_pairs(shared_data / "tatoeba/test/eng-ron.tsv.gz", max_lines=50)[0]
    assert json.loads((root / "checksums.json").read_text()) == pins  # read, never written

    # Changed bytes behind a pinned URL are refused, and nothing is left behind.
    (web / "ron-eng.zip").write_bytes(b"tampered")
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(root / "checksums.json", again)
    with pytest.raises(UserError, match=f"{zip_url}: checksum mismatch"):
        fetch_tatoeba("ron", again, **urls)
    assert [p.name for p in again.rglob("*") if p.is_file()] == ["checksums.json"]
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch(zip_url, tmp_path / "dl" / "x.zip", pins[zip_url])
    assert list((tmp_path / "dl").iterdir()) == []
    ok = fetch(zip_url, tmp_path / "dl" / "x.zip", sha256_file(web / "ron-eng.zip"))
    assert ok.read_bytes() == b"tampered"


def test_in_repo_slices_match_their_manifest():
    """data/: each slice holds the lines slices.json says and serves the smoke sweep's max_pairs."""
    manifest = json.loads((REPO_DATA / SLICES).read_text())
    for name, f in manifest["files"].items():
        path = REPO_DATA / "tatoeba" / name
        assert sha256_file(path) == f["sha256"], name
        with gzip.open(path, "rb") as g:
            assert sum(1 for _ in g) == f["lines"] <= f["total"], name
        shared = SHARED_DATA / "tatoeba" / name
        if shared.is_file():  # where the full corpora are here too: a slice is their first lines
            with gzip.open(path, "rb") as a, gzip.open(shared, "rb") as b:
                kept = a.read()
                assert b.read(len(kept)) == kept, name
    smoke = yaml.safe_load((ROOT / "tune_spaces" / "smoke.yaml").read_text())
    tasks = smoke["tasks"]["high"] + smoke["tasks"]["low"]
    cfg = DataConfig(tasks=tasks, data_dir=str(REPO_DATA), max_pairs=smoke["data"]["max_pairs"])
    assert data_dir(cfg).path == REPO_DATA
    assert "Licence: CC-BY 2.0 FR" in (REPO_DATA / "README.md").read_text()


def test_data_dir_resolution_order(lone_clone, tmp_path, monkeypatch):
    """--data-dir, $RAY_MTL_DATA, ../shared/data, the slices (when they hold enough), the cache."""
    repo = lone_clone
    smoke = DataConfig(max_pairs=20_000)  # eng-fra + eng-ron, as make run
    root = data_dir(smoke)
    assert (root.path, root.source, root.is_cache) == (repo / "data", "the in-repo slices", False)
    assert data_dir(DataConfig(tasks=["eng-ron"])).path == repo / "data"  # the whole file is here
    full = data_dir(DataConfig())  # all of eng-fra: more than its slice holds
    assert (full.path, full.is_cache) == (tmp_path / "cache" / "data", True)
    short = "tatoeba/train/eng-fra.tsv.gz holds the first 20,000 of its 167,130 lines"
    assert f"{short}, and no max_pairs asks for more" in full.passed[-1]
    deu = data_dir(DataConfig(tasks=["eng-deu"], max_pairs=100))
    assert deu.is_cache and "no tatoeba/train/eng-deu.tsv.gz" in deu.passed[-1]

    (tmp_path / "ws" / "shared" / "data" / "tatoeba").mkdir(parents=True)
    assert data_dir(smoke).path == tmp_path / "ws" / "shared" / "data"
    monkeypatch.setenv("RAY_MTL_DATA", str(tmp_path))
    assert (data_dir(smoke).path, data_dir(smoke).source) == (tmp_path, "$RAY_MTL_DATA")
    given = data_dir(DataConfig(data_dir=str(repo / "data"), max_pairs=20_000))
    assert (given.path, given.source) == (repo / "data", "--data-dir")
    # Given the slices, a run that wants more lines than they hold is refused, not shortened.
    short = r"slices\.json: tatoeba/train/eng-fra\.tsv\.gz holds the first 20,000 of its 167,130 "
    with pytest.raises(UserError, match=short + "lines, and max_pairs 20,001 asks for more"):
        data_dir(DataConfig(data_dir=str(repo / "data"), max_pairs=20_001))
    monkeypatch.setenv("RAY_MTL_DATA", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"missing: data dir not found \(from \$RAY_MTL_DATA\)"):
        data_dir(DataConfig())


# Files as users' tools write them, each holding the same real pairs as a plain UTF-8 TSV.
ATTRIBUTION = "\tCC-BY 2.0 (France) Attribution: tatoeba.org #1276 (CK) & #5566 (Ron)"
USER_FILES = {
    # Excel's "Unicode Text": UTF-16 LE with a byte-order mark and CRLF line ends.
    "excel.txt": lambda text: text.replace("\n", "\r\n").encode("utf-16"),
    "utf16be.tsv": lambda text: b"\xfe\xff" + text.encode("utf-16-be"),
    "utf16.tsv.gz": lambda text: gzip.compress(text.encode("utf-16")),
    "utf32.tsv": lambda text: text.encode("utf-32"),
    # Notepad's "UTF-8 with BOM".
    "bom.tsv": lambda text: text.encode("utf-8-sig"),
    # The raw manythings.org export: english, target, attribution.
    "manythings.txt": lambda text: text.replace("\n", ATTRIBUTION + "\n").encode(),
}


def real_text(shared_data: Path, n: int) -> str:
    with gzip.open(shared_data / "tatoeba/train/eng-ron.tsv.gz", "rt", encoding="utf-8") as f:
        return "".join(f.readline() for _ in range(n))


@pytest.mark.parametrize("name", [*USER_FILES, "parquet.pq"])
def test_real_users_files_read_as_their_utf8_twin(shared_data, tmp_path, name):
    text = real_text(shared_data, 500)
    (tmp_path / "plain.tsv").write_text(text, encoding="utf-8")
    want, want_stats = read_pairs(tmp_path / "plain.tsv")
    assert not want_stats.invalid
    path = tmp_path / name
    if name.endswith(".pq"):  # Parquet under another name: told by its content
        pq.write_table(pa.table({"en": [s for s, _ in want], "ro": [t for _, t in want]}), path)
        got, stats = read_pairs(path, columns=("en", "ro"))
    else:
        path.write_bytes(USER_FILES[name](text))
        drop = "drop" if name == "manythings.txt" else "error"
        got, stats = read_pairs(path, extra_columns=drop)
    assert got == want and stats.lines == 500 and not stats.invalid
    assert not any("\ufeff" in s or "\x00" in s for pair in got for s in pair)


def test_prepare_reads_excel_and_manythings_files(shared_data, tmp_path, capsys):
    """Through the CLI: a UTF-16 file from Excel, and a manythings.org export kept by its
    TaskSpec option, prepare like the UTF-8 TSV they hold."""
    text = real_text(shared_data, 2000)
    (tmp_path / "excel.txt").write_bytes(USER_FILES["excel.txt"](text))
    (tmp_path / "manythings.txt").write_bytes(USER_FILES["manythings.txt"](text))
    tasks = [
        dict(name="eng-excel", src_lang="eng", tgt_lang="ron", train=[str(tmp_path / "excel.txt")]),
        dict(
            name="eng-many",
            src_lang="eng",
            tgt_lang="ron",
            train=[str(tmp_path / "manythings.txt")],
            extra_columns="drop",
        ),
    ]
    cfg = {"tasks": ["eng-excel", "eng-many"], "custom_tasks": tasks, "vocab_size": 500}
    (tmp_path / "data.yaml").write_text(json.dumps(cfg))
    rc = main(["--config", str(tmp_path / "data.yaml"), "--out-dir", str(tmp_path / "out"), "-q"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    prepared = load_prepared(Path(stdout.split("prepared: ")[1].split()[0]))
    for task in ("eng-excel", "eng-many"):
        counts = prepared.manifest["tasks"][task]["counts"]
        assert counts["raw"] == 2000 and counts["invalid"] == {}, counts
        assert prepared.size(task) > 1500
        shard = prepared.shard(task, "train")
        text = shard.column("src_text").to_pylist() + shard.column("tgt_text").to_pylist()
        assert not any("\x00" in t or "\ufeff" in t for t in text)


def test_a_training_cap_samples_train_only_and_keeps_order():
    pairs = [(f"en {i}", f"ro {i}") for i in range(400)]
    kw = dict(dev_size=20, dev_fraction=0.1, seed=0)
    whole = make_splits("eng-ron", pairs, None, **kw)
    capped = make_splits("eng-ron", pairs, None, train_cap=50, **kw)
    assert (capped.dev, capped.test) == (whole.dev, whole.test)  # dev and test keep their sizes
    assert len(capped.train) == 50 and set(capped.train) < set(whole.train)
    assert capped.train == sorted(capped.train, key=whole.train.index)  # in file order
    assert capped.train[-1] != whole.train[49]  # a sample across the file, not its head
    again = make_splits("eng-ron", pairs, None, train_cap=50, **kw)
    assert again.train == capped.train
    more = make_splits("eng-ron", pairs, None, train_cap=10_000, **kw)
    assert more.train == whole.train  # a cap above the pairs there keeps them all


def test_an_evaluation_set_is_held_out_like_test(shared_data, tmp_path):
    """A task's extra evaluation set (``data.eval_sets``) is read, kept whole as its own split
    and removed from training (both sides); the other task's cleaned splits stay cached."""
    out = tmp_path / "out"
    plain = small_cfg(shared_data, out, tasks=["eng-fra", "eng-ron"])
    before = prepare(plain, verbose=False)
    held = before.shard("eng-ron", "train").slice(0, 40)  # 40 pairs it trained on
    src, tgt = (held.column(c).to_pylist() for c in ("src_text", "tgt_text"))
    rows = [f"{s}\t{t}\n" for s, t in zip(src, tgt, strict=True)]
    extra = tmp_path / "extra.tsv"
    extra.write_text("".join(rows + rows[:3]))  # and 3 duplicates
    cfg = small_cfg(shared_data, out, tasks=["eng-fra", "eng-ron"])
    cfg.eval_sets = {"eng-ron": {"extra": str(extra)}}
    data = prepare(cfg, verbose=False)
    assert "clean:eng-ron" in data.built and "clean:eng-fra" not in data.built
    assert data.eval_sets("eng-ron") == ["extra"] and data.eval_sets("eng-fra") == []
    shard = data.shard("eng-ron", "extra")
    assert shard.column("src_text").to_pylist() == held.column("src_text").to_pylist()
    assert data.manifest["tasks"]["eng-ron"]["counts"]["eval_sets"] == {"extra": 40}
    extra_src, extra_tgt = texts(data, "eng-ron", "extra")
    for split in ("train", "dev"):
        src, tgt = texts(data, "eng-ron", split)
        assert not src & extra_src and not tgt & extra_tgt, split
    with pytest.raises(UserError, match="split: expected one of train, dev, test, extra"):
        data.shard("eng-ron", "flores")


def test_evaluation_sets_are_removed_from_train_and_dev():
    pairs = [(f"en {i}", f"ro {i}") for i in range(400)]
    kw = dict(dev_size=20, dev_fraction=0.1, seed=0)
    held = [("en 7", "other"), ("other", "ro 9"), ("en 7", "other")]
    s = make_splits("eng-ron", pairs, [("en x", "ro x")], eval_sets={"extra": held}, **kw)
    assert s.eval_sets == {"extra": held[:2]}  # deduplicated, in order
    kept = {p for split in (s.train, s.dev) for p in split}
    assert not {("en 7", "ro 7"), ("en 9", "ro 9")} & kept
    assert len(s.train) + len(s.dev) == 398 and s.decontaminated == 2
