"""Tasks and where their corpora live.

    root = data_dir(cfg)              # --data-dir / RAY_MTL_DATA / ../shared/data / data/ / cache
    tasks = resolve(cfg, root.path)   # DataConfig.tasks -> [Task] or languages; custom override
    root.check(tasks)                 # a missing catalogue file: named, with the places looked in

The catalogue is the shipped Tatoeba pairs, ``<root>/tatoeba/{train,test}/eng-XXX.tsv.gz``. The
repo's ``data/`` holds slices of three of them (data/README.md), listed with their line counts in
``tatoeba/slices.json``: a run that needs more lines than a slice holds does not use them. When no
corpus root serves the run, the cache dir is used and missing files are downloaded there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import ray_mtl
from ray_mtl.config import DataConfig, TaskSpec
from ray_mtl.errors import UserError

TATOEBA_LANGS = ("deu", "fra", "spa", "ron", "ind")
REPO_DATA = Path(ray_mtl.__file__).resolve().parents[1] / "data"
"""The in-repo slices (an editable install or a checkout): enough for ``make run`` and the tests."""
SLICES = Path("tatoeba") / "slices.json"
"""A root's list of its files' line counts when they are cut short (data/make_slices.py)."""


@dataclass(frozen=True)
class Task:
    """One translation direction with its files resolved to absolute paths."""

    name: str
    src_lang: str
    tgt_lang: str
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    columns: tuple[str, str] = ("src", "tgt")
    catalogue: bool = False
    """Its files are the catalogue's under the data root (not a custom task's own paths)."""
    extra_columns: str = "error"
    eval_sets: tuple[tuple[str, Path], ...] = ()
    """Extra named evaluation sets (``data.eval_sets``), each (name, file)."""

    @property
    def tag(self) -> str:
        """The target-language tag the encoder sees first, e.g. ``<2ron>``."""
        return f"<2{self.tgt_lang}>"


def cache_root() -> Path:
    """Where prepared data and downloads go by default: $RAY_MTL_CACHE or ~/.cache/ray_mtl."""
    return Path(os.environ.get("RAY_MTL_CACHE") or "~/.cache/ray_mtl").expanduser()


@dataclass(frozen=True)
class DataRoot:
    """The corpus root a run reads, how it was found, and the places passed over on the way."""

    path: Path
    source: str
    """What chose it: ``--data-dir``, ``$RAY_MTL_DATA``, ``../shared/data``, slices or cache."""
    is_cache: bool = False
    """The download cache: missing catalogue files may be fetched into it."""
    passed: tuple[str, ...] = ()
    """Each place looked in before this one, and why it was not used."""

    def not_found(self, path: Path, why: str = "not there") -> UserError:
        """The error for a catalogue file missing from this root: the file and every place tried."""
        looked = "; ".join([*self.passed, f"{self.source} {self.path} ({why})"])
        return UserError(
            f"{path.relative_to(self.path)}: not found; looked in: {looked}."
            f" Supply it: put the file (gzip'd TSV, english<TAB>target) in {self.path}, or point"
            " --data-dir / RAY_MTL_DATA at a root that holds it"
        )

    def check(self, tasks: list[Task]) -> None:
        """Refuse the first catalogue file of ``tasks`` that this root lacks."""
        if path := first_missing(tasks):
            raise self.not_found(path)


def first_missing(tasks: list[Task]) -> Path | None:
    """The first catalogue file of ``tasks`` not on disk (custom tasks' files are checked later)."""
    files = (p for t in tasks if t.catalogue for p in t.train + t.test)
    return next((p for p in files if not p.is_file()), None)


def resolve(cfg: DataConfig, root: Path) -> list:
    """``cfg``'s tasks under ``root``: translation ``Task``s, or for ``kind: lm`` languages."""
    if cfg.kind == "lm":
        from ray_mtl.data.text import resolve_languages  # text.py builds on this module

        return resolve_languages(cfg, root)
    return resolve_tasks(cfg, root)


def data_dir(cfg: DataConfig) -> DataRoot:
    """The corpus root: ``--data-dir``, $RAY_MTL_DATA, ../shared/data, the slices, the cache."""
    explicit = cfg.data_dir or os.environ.get("RAY_MTL_DATA")
    if explicit:
        source = "--data-dir" if cfg.data_dir else "$RAY_MTL_DATA"
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise UserError(f"{path}: data dir not found (from {source})")
        if short := _too_short(path, cfg):
            raise UserError(
                f"{path / SLICES}: {short}: use a root with the whole file (../shared/data), "
                "or a smaller max_pairs"
            )
        return DataRoot(path.resolve(), source)
    beside = [REPO_DATA.parents[1], Path.cwd().parent]  # the repo's parent, the working dir's
    shared = list(dict.fromkeys((p / "shared" / "data").resolve() for p in beside))
    for path in shared:
        if (path / "tatoeba").is_dir():
            return DataRoot(path, "../shared/data")
    passed = [f"../shared/data ({', '.join(map(str, shared))}: absent)"]
    lacks = first_missing(resolve(cfg, REPO_DATA))
    why = f"no {lacks.relative_to(REPO_DATA)}" if lacks else _too_short(REPO_DATA, cfg)
    if why is None:
        return DataRoot(REPO_DATA, "the in-repo slices", passed=tuple(passed))
    passed.append(f"the in-repo slices {REPO_DATA} ({why})")
    return DataRoot(cache_root() / "data", "the cache", is_cache=True, passed=tuple(passed))


def _too_short(root: Path, cfg: DataConfig) -> str | None:
    """Why ``root``'s slices cannot serve ``cfg.max_pairs`` (None: they can, or it has none)."""
    manifest = root / SLICES
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        lines = {name: (int(f["lines"]), int(f["total"])) for name, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{manifest}: cannot read the slices' line counts ({e!r})") from None
    for task in resolve(cfg, root):
        for path in task.train + task.test if task.catalogue else ():
            held, total = lines.get(str(path.relative_to(root / "tatoeba")), (0, 0))
            if held < total and (cfg.max_pairs or total) > held:
                wanted = f"max_pairs {cfg.max_pairs:,}" if cfg.max_pairs else "no max_pairs"
                return (
                    f"{path.relative_to(root)} holds the first {held:,} of its {total:,} lines, "
                    f"and {wanted} asks for more"
                )
    return None


def resolve_tasks(cfg: DataConfig, root: Path) -> list[Task]:
    """The configured tasks, in order; a custom task of the same name overrides the catalogue."""
    custom = {t.name: t for t in cfg.custom_tasks}
    tasks = []
    for i, name in enumerate(cfg.tasks):
        sets = tuple((k, _path(f)) for k, f in cfg.eval_sets.get(name, {}).items())
        if name in custom:
            tasks.append(_custom(custom[name], sets))
        elif name in {f"eng-{lang}" for lang in TATOEBA_LANGS}:
            lang = name.removeprefix("eng-")
            tatoeba = root / "tatoeba"
            tasks.append(
                Task(
                    name,
                    "eng",
                    lang,
                    (tatoeba / "train" / f"{name}.tsv.gz",),
                    (tatoeba / "test" / f"{name}.tsv.gz",),
                    catalogue=True,
                    eval_sets=sets,
                )
            )
        else:
            known = [f"eng-{lang}" for lang in TATOEBA_LANGS] + sorted(custom)
            raise UserError(
                f"tasks[{i}]: unknown task {name!r} (expected one of {', '.join(known)}, "
                "or a name from custom_tasks)"
            )
    return tasks


def _path(file: str) -> Path:
    return Path(file).expanduser().resolve()


def _custom(spec: TaskSpec, eval_sets: tuple[tuple[str, Path], ...]) -> Task:
    return Task(
        spec.name,
        spec.src_lang,
        spec.tgt_lang,
        tuple(map(_path, spec.train)),
        tuple(map(_path, spec.test)),
        (spec.src_column, spec.tgt_column),
        extra_columns=spec.extra_columns,
        eval_sets=eval_sets,
    )
