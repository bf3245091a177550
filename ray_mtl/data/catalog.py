"""Tasks and where their corpora live.

    root = data_dir(cfg)                 # --data-dir / RAY_MTL_DATA / ../shared/data / cache
    tasks = resolve_tasks(cfg, root)     # DataConfig.tasks -> [Task], custom_tasks override

The catalogue is the shipped Tatoeba pairs, ``<root>/tatoeba/{train,test}/eng-XXX.tsv.gz``. When
no corpus root holds them, the cache dir is used and missing files are downloaded there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray_mtl
from ray_mtl.config import DataConfig, TaskSpec
from ray_mtl.errors import UserError

TATOEBA_LANGS = ("deu", "fra", "spa", "ron", "ind")


@dataclass(frozen=True)
class Task:
    """One translation direction with its files resolved to absolute paths."""

    name: str
    src_lang: str
    tgt_lang: str
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    columns: tuple[str, str] = ("src", "tgt")
    extra_columns: str = "error"

    @property
    def tag(self) -> str:
        """The target-language tag the encoder sees first, e.g. ``<2ron>``."""
        return f"<2{self.tgt_lang}>"


def cache_root() -> Path:
    """Where prepared data and downloads go by default: $RAY_MTL_CACHE or ~/.cache/ray_mtl."""
    return Path(os.environ.get("RAY_MTL_CACHE") or "~/.cache/ray_mtl").expanduser()


def data_dir(cfg: DataConfig) -> tuple[Path, bool]:
    """The corpus root, and whether it is the download cache (missing files may be fetched)."""
    explicit = cfg.data_dir or os.environ.get("RAY_MTL_DATA")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise UserError(f"{path}: data dir not found (from --data-dir / RAY_MTL_DATA)")
        return path.resolve(), False
    project = Path(ray_mtl.__file__).resolve().parents[2] / "shared" / "data"
    for path in (project, Path.cwd() / ".." / "shared" / "data"):
        if (path / "tatoeba").is_dir():
            return path.resolve(), False
    return cache_root() / "data", True


def resolve_tasks(cfg: DataConfig, root: Path) -> list[Task]:
    """The configured tasks, in order; a custom task of the same name overrides the catalogue."""
    custom = {t.name: t for t in cfg.custom_tasks}
    tasks = []
    for i, name in enumerate(cfg.tasks):
        if name in custom:
            tasks.append(_custom(custom[name]))
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
                )
            )
        else:
            known = [f"eng-{lang}" for lang in TATOEBA_LANGS] + sorted(custom)
            raise UserError(
                f"tasks[{i}]: unknown task {name!r} (expected one of {', '.join(known)}, "
                "or a name from custom_tasks)"
            )
    return tasks


def _custom(spec: TaskSpec) -> Task:
    def paths(files: list[str]) -> tuple[Path, ...]:
        return tuple(Path(f).expanduser().resolve() for f in files)

    return Task(
        spec.name,
        spec.src_lang,
        spec.tgt_lang,
        paths(spec.train),
        paths(spec.test),
        (spec.src_column, spec.tgt_column),
        spec.extra_columns,
    )
