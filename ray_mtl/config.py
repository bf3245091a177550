"""Typed configs: dataclasses with a docstring per field, validated in ``__post_init__``.

    cfg = load(TrainConfig, "run.yaml")        # YAML -> typed, validated config
    plain = to_dict(cfg)                       # only at the Ray boundary
    cfg = from_dict(TrainConfig, plain)        # and back inside the worker

``from_dict`` checks every key and type against the dataclass annotations, so a typo or a wrong
type is reported with the file and the dotted field path (``run.yaml: model.d_model: expected
int, got 'big'``) instead of surfacing later as a crash.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ray_mtl.errors import UserError

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------


def check(cond: bool, field: str, expected: str, got: Any) -> None:
    """Raise a UserError naming ``field``, what was expected and what was found."""
    if not cond:
        raise UserError(f"{field}: expected {expected}, got {short_repr(got)}")


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = 80
MAX_REPR = 200


def short_repr(value: Any) -> str:
    """``repr`` for error messages: at most MAX_REPR characters, and built without walking all of
    ``value`` (an alias bomb in YAML is a small file whose full repr is gigabytes)."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


MAX_STRING = 4096
"""Longest string a config field takes (a path is at most 4096 bytes on Linux)."""
MAX_YAML_VALUES = 100_000
"""Most values (scalars, lists, mappings) a config file may hold once its aliases are expanded;
real configs hold hundreds."""


def _check_expanded_size(data: Any, source: str) -> None:
    """Refuse a YAML document that expands (through aliases) to more than MAX_YAML_VALUES values,
    naming the field where the count ran out. Every consumer then walks bounded data."""
    budget = MAX_YAML_VALUES
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, field = stack.pop()
        budget -= 1
        if budget < 0:
            where = field.split("[")[0][:MAX_REPR] or "top level"  # the field, not the index
            raise UserError(
                f"{source}: {where}: too large (more than {MAX_YAML_VALUES:,} values once YAML "
                "aliases are expanded; expected a config)"
            )
        if isinstance(value, dict):
            dot = f"{field}." if field else ""
            stack += [(v, f"{dot}{k}") for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{field}[{i}]") for i, v in enumerate(value)]


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (a path or a storage URI) with ``yaml.safe_load``; errors name the file
    (and line where known)."""
    from ray_mtl.storage import read_text  # pyarrow: only when a file is read

    try:
        text = read_text(path)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML ({problem})") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise UserError(f"{path}: invalid YAML ({str(e).split(':')[0]})") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML (nested too deeply; expected a config)") from None
    _check_expanded_size(data, str(path))
    return data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, field)
            except UserError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise UserError(f"{field}: expected {_type_name(tp)}, got {short_repr(value)}")
    if origin is Literal:
        check(value in typing.get_args(tp), field, _type_name(tp), value)
        return value
    if origin in (list, tuple):
        check(isinstance(value, list | tuple), field, _type_name(tp), value)
        (arg,) = typing.get_args(tp)[:1]
        items = [_convert(arg, v, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        check(isinstance(value, dict), field, _type_name(tp), value)
        _, varg = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            check(isinstance(k, str), f"{field} key", "a string", k)
            out[k] = _convert(varg, v, f"{field}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, field)
    if tp is bool:
        check(isinstance(value, bool), field, "true or false", value)
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), field, "an integer", value)
        return value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        check(ok, field, "a number", value)
        return float(value)
    if tp is str:
        check(isinstance(value, str), field, "a string", value)
        if len(value) > MAX_STRING:
            raise UserError(
                f"{field}: expected a string of at most {MAX_STRING:,} characters, got "
                f"{short_repr(value)} ({len(value):,} characters)"
            )
        return value
    raise TypeError(f"unsupported config type {tp!r} for {field}")


def from_dict(cls: type[T], data: Any, source: str = "") -> T:
    """Build dataclass ``cls`` from plain data, checking keys and types recursively.

    ``source`` (a file name) prefixes every error, which also names the dotted field path.
    """
    try:
        return _build(cls, data, "")
    except UserError as e:
        raise UserError(f"{source}: {e}" if source else str(e)) from None


def _build(cls: type[T], data: Any, path: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        got = short_repr(data)
        raise UserError(f"{path or 'top level'}: expected a mapping ({cls.__name__}), got {got}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    dot = f"{path}." if path else ""
    unknown = sorted(set(data) - fields)
    if unknown:
        expected = ", ".join(sorted(fields))
        raise UserError(f"{dot}{unknown[0]}: unknown field (expected one of: {expected})")
    missing = sorted(f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in data)
    if missing:
        raise UserError(f"{dot}{missing[0]}: missing (required by {cls.__name__})")
    kwargs = {name: _convert(hints[name], value, dot + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except UserError as e:
        raise UserError(f"{dot}{e}") from None


def _required(f: dataclasses.Field) -> bool:
    return f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def to_dict(cfg: Any) -> dict:
    """A config as plain dicts/lists, for the Ray boundary and for writing YAML/JSON."""
    return dataclasses.asdict(cfg)


def load(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into ``cls``; every error names the file."""
    data = load_yaml(path)
    return from_dict(cls, data, str(path))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_name(name: str, field: str) -> None:
    """Names end up in paths: letters, digits, ``_-.`` only, never ``..`` or ``/``."""
    ok = bool(name) and set(name) <= NAME_CHARS and name not in (".", "..") and ".." not in name
    check(ok, field, "a name of letters, digits, '_', '-', '.' (no '/' or '..')", name)


RESERVED_SPLITS = ("train", "dev", "test")


def check_split_name(name: str, field: str) -> None:
    """An evaluation set's name: a split of the metrics (``<name>/<task>/bleu``), so a path-safe
    name that is not train, dev or test."""
    check_name(name, field)
    check(name not in RESERVED_SPLITS, field, "a name other than train, dev, test", name)


@dataclasses.dataclass
class TaskSpec:
    """A user-supplied translation direction (the shipped Tatoeba pairs need none)."""

    name: str
    """Task name, e.g. ``eng-ron``; used in paths and metrics."""
    src_lang: str
    """Source language code (ISO 639-3, e.g. ``eng``)."""
    tgt_lang: str
    """Target language code; the model sees ``<2{tgt_lang}>`` on the source."""
    train: list[str]
    """Training files: TSV (``source<TAB>target``, plain or .gz; UTF-8, or UTF-16 with its
    byte-order mark) or Parquet (told by its content, whatever the file's name)."""
    test: list[str] = dataclasses.field(default_factory=list)
    """Test files, same formats; empty means a test set is carved from train like dev."""
    src_column: str = "src"
    """Parquet only: the source-text column."""
    tgt_column: str = "tgt"
    """Parquet only: the target-text column."""
    extra_columns: Literal["error", "drop"] = "error"
    """TSV only: a line of more than two columns is invalid (``error``; a file of mostly such
    lines is refused), or keeps its first two (``drop``: for the raw manythings.org export, whose
    third column is the attribution)."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        for f in ("src_lang", "tgt_lang"):
            v = getattr(self, f)
            check(v.isalpha() and 2 <= len(v) <= 8, f, "a language code like 'ron'", v)
        check(len(self.train) > 0, "train", "at least one file", self.train)


Kind = Literal["translation", "lm"]
"""What a task is: a translation direction (encoder-decoder on sentence pairs) or a language
(decoder-only language model on monolingual text)."""
KINDS = typing.get_args(Kind)


@dataclasses.dataclass
class LanguageSpec:
    """A user-supplied language for ``kind: lm`` (the shipped languages need none)."""

    name: str
    """Task name, e.g. ``ron`` or ``mc4-ron``; used in paths and metrics."""
    train: list[str]
    """Training files: plain text (``.txt``, ``.txt.gz``: one document per line), JSON Lines
    (``.jsonl``, ``.jsonl.gz``: one object per line) or Parquet."""
    test: list[str] = dataclasses.field(default_factory=list)
    """Test files, same formats; empty means a test set is carved from train like dev."""
    text_field: str = "text"
    """JSON Lines: the field holding a document's text; Parquet: the text column."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check(len(self.train) > 0, "train", "at least one file", self.train)
        check(bool(self.text_field), "text_field", "a field name", self.text_field)


@dataclasses.dataclass
class DataConfig:
    """What ``python -m ray_mtl.prepare`` builds: tasks, splits, tokenizer, shards."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: ["eng-fra", "eng-ron"])
    """Task names: translation, the shipped Tatoeba pairs (``eng-{deu,fra,spa,ron,ind}``) or
    custom_tasks; lm, the shipped languages (``deu``, ``fra``, ``spa``, ``ron``, ``ind``: the
    target sides of those pairs) or custom_languages."""
    kind: Kind = "translation"
    """translation: sentence pairs; lm: monolingual documents (in a run, the run's ``kind``)."""
    custom_tasks: list[TaskSpec] = dataclasses.field(default_factory=list)
    """Translation: user corpora, each a TaskSpec; a name here overrides the catalogue."""
    custom_languages: list[LanguageSpec] = dataclasses.field(default_factory=list)
    """lm: user corpora, each a LanguageSpec; a name here overrides the catalogue."""
    data_dir: str | None = None
    """Corpus root. None: env RAY_MTL_DATA, ../shared/data, the repo's data/ slices, the cache."""
    out_dir: str | None = None
    """Where prepared data is written. None: env RAY_MTL_CACHE or ~/.cache/ray_mtl."""
    vocab_size: int = 8000
    """Joint SentencePiece vocabulary size (language tags included)."""
    dev_size: int = 1000
    """Dev pairs carved from train per task: min(dev_size, dev_fraction * pairs)."""
    dev_fraction: float = 0.05
    """Upper bound on the dev share of a task's pairs."""
    max_pairs: int | None = None
    """Read only the first N lines of each train and test file (small slices for tests)."""
    train_pairs: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per task, a cap on its training pairs: a seeded sample of N kept once dev and test are
    split off (they keep their sizes). Builds a stronger imbalance than the files hold."""
    eval_sets: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """Translation: per task, extra named evaluation sets ``{name: file}`` (formats as a custom
    task's test files; e.g. FLORES-200 devtest beside Tatoeba's test). Training pairs sharing a
    side with one are removed, as for test; each is scored (CE, BLEU, chrF) at every trial's end
    on the trial's best-per-task weights, as the split ``<name>``."""
    max_len: int = 128
    """Token cap per side; longer pairs are dropped and counted. lm: longer documents are cut
    into rows of this many tokens (none dropped)."""
    tokenizer_temperature: float = 5.0
    """Temperature of the tokenizer's training sample, so low-resource languages are covered."""
    tokenizer_sample: int = 200_000
    """Sentences in the tokenizer's training sample."""
    seed: int = 0
    """Seed for the dev split and the tokenizer sample."""
    strict: bool = False
    """Fail on the first invalid line (file:line) instead of skipping and counting it."""

    def __post_init__(self) -> None:
        check(len(self.tasks) > 0, "tasks", "at least one task", self.tasks)
        for i, t in enumerate(self.tasks):
            check_name(t, f"tasks[{i}]")
        check(len(set(self.tasks)) == len(self.tasks), "tasks", "distinct names", self.tasks)
        for field in ("custom_tasks", "custom_languages"):
            names = [t.name for t in getattr(self, field)]
            check(len(set(names)) == len(names), field, "distinct task names", names)
        check(self.vocab_size >= 100, "vocab_size", "an integer >= 100", self.vocab_size)
        check(self.dev_size >= 1, "dev_size", "an integer >= 1", self.dev_size)
        check(0 < self.dev_fraction < 1, "dev_fraction", "a number in (0, 1)", self.dev_fraction)
        ok = self.max_pairs is None or self.max_pairs > 0
        check(ok, "max_pairs", "a positive integer or null", self.max_pairs)
        for name, n in self.train_pairs.items():
            check(n >= 1, f"train_pairs.{name}", "a positive integer", n)
        for task, sets in self.eval_sets.items():
            check(bool(sets), f"eval_sets.{task}", "{name: file, ...}", sets)
            for name, file in sets.items():
                check_split_name(name, f"eval_sets.{task}")
                check(bool(file), f"eval_sets.{task}.{name}", "a TSV or Parquet file", file)
        check(self.max_len >= 8, "max_len", "an integer >= 8", self.max_len)
        t = self.tokenizer_temperature
        check(t >= 1, "tokenizer_temperature", "a number >= 1", t)
        check(self.tokenizer_sample >= 1000, "tokenizer_sample", ">= 1000", self.tokenizer_sample)

    def check_task_keys(self, at: str = "") -> None:
        """Training caps and evaluation sets name tasks of this config (called once ``tasks``
        and ``kind`` are final)."""
        for field in ("train_pairs", "eval_sets"):
            for name in getattr(self, field):
                check(name in self.tasks, f"{at}{field}.{name}", f"one of {self.tasks}", name)
        sets = sorted(self.eval_sets)
        check(not sets or self.kind == "translation", f"{at}eval_sets", "none for kind 'lm'", sets)

    def check_kind(self, at: str = "") -> None:
        """Custom corpora of the other kind are refused (called once ``kind`` is final: by a run's
        settings after they set it, and by ``prepare``); ``at`` prefixes the field."""
        other = "custom_tasks" if self.kind == "lm" else "custom_languages"
        want = "custom_languages" if self.kind == "lm" else "custom_tasks"
        names = [t.name for t in getattr(self, other)]
        expected = f"none for kind {self.kind!r} (its corpora are {want})"
        check(not names, at + other, expected, names)


# --------------------------------------------------------------------------------------------
# Model, optimiser, mixture, phases, one training run
# --------------------------------------------------------------------------------------------

MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=128),
    "small": dict(d_model=256, n_heads=4, encoder_layers=3, decoder_layers=3, d_ff=1024),
    "base": dict(d_model=512, n_heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048),
    "gpt2": dict(d_model=768, n_heads=12, encoder_layers=12, decoder_layers=12, d_ff=3072),
}


@dataclasses.dataclass
class ModelConfig:
    """Transformer (pre-LN, tied embeddings): encoder-decoder for translation, decoder-only (of
    ``decoder_layers`` layers; ``encoder_layers`` unused) for lm. Unset sizes come from the
    preset."""

    preset: Literal["tiny", "small", "base", "gpt2", "custom"] = "small"
    """Size preset: tiny (tests), small (CPU default), base (Transformer-base), gpt2 (GPT-2
    small's shape: 85M parameters in its layers, 124M with a 50k vocabulary), custom."""
    d_model: int | None = None
    """Model width."""
    n_heads: int | None = None
    """Attention heads; must divide d_model."""
    encoder_layers: int | None = None
    """Encoder depth."""
    decoder_layers: int | None = None
    """Decoder depth."""
    d_ff: int | None = None
    """Feed-forward width."""
    dropout: float = 0.1
    """Dropout on the embeddings and on each block's output (attention and feed-forward)."""
    attention_dropout: float = 0.0
    """Dropout on the attention weights. 0 (fairseq's default too) keeps the fused attention
    kernels fast: on an H200 the dropout variant of the kernel was the largest single cost."""
    max_len: int = 128
    """Longest sequence (positions) the model handles."""

    def __post_init__(self) -> None:
        sizes = MODEL_PRESETS.get(self.preset, {})
        for k in ("d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff"):
            if getattr(self, k) is None:
                check(self.preset != "custom", k, "a value (preset is 'custom')", None)
                setattr(self, k, sizes[k])
            check(getattr(self, k) >= 1, k, "a positive integer", getattr(self, k))
        ok = self.d_model % self.n_heads == 0
        check(ok, "n_heads", f"a divisor of d_model={self.d_model}", self.n_heads)
        check(0 <= self.dropout < 1, "dropout", "a number in [0, 1)", self.dropout)
        ok = 0 <= self.attention_dropout < 1
        check(ok, "attention_dropout", "a number in [0, 1)", self.attention_dropout)
        check(self.max_len >= 8, "max_len", "an integer >= 8", self.max_len)


@dataclasses.dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (its value depends only on steps since a reset)."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of warm-up."""
    warmup_steps: int = 100
    """Linear warm-up steps after the start and after every reset."""
    schedule: Literal["rsqrt", "constant"] = "rsqrt"
    """After warm-up: inverse square root decay, or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    label_smoothing: float = 0.0
    """Label smoothing of the training loss (evaluation CE is always unsmoothed)."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "a positive number", self.lr)
        check(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0", self.warmup_steps)
        check(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        check(ok, "betas", "two numbers in [0, 1)", self.betas)
        check(self.grad_clip >= 0, "grad_clip", "a number >= 0", self.grad_clip)
        ok = 0 <= self.label_smoothing < 1
        check(ok, "label_smoothing", "a number in [0, 1)", self.label_smoothing)


def check_rates(
    w: dict[str, float], tasks: list[str] | None = None, field: str = "rates"
) -> dict[str, float]:
    """Validate sampling rates (each in [0, 1], summing to 1) over ``tasks`` (None: any names);
    returns a rate for every task (missing: 0). The one check of rates, wherever they come from."""
    expected = ", ".join(tasks or [])
    for name, r in w.items():
        if tasks is not None and name not in tasks:
            raise UserError(f"{field}.{name}: unknown task (expected one of {expected})")
        if not (isinstance(r, int | float) and 0 <= r <= 1):
            raise UserError(f"{field}.{name}: expected a rate in [0, 1], got {r!r}")
    total = sum(w.values())
    if abs(total - 1) > 1e-6:
        raise UserError(f"{field}: expected rates summing to 1, got {round(total, 9)!r}")
    return {name: float(w.get(name, 0.0)) for name in (w if tasks is None else tasks)}


@dataclasses.dataclass
class MixtureConfig:
    """How examples are drawn from tasks: one rule, turned into rates by ``mixture.rates``."""

    rule: Literal["explicit", "proportional", "temperature", "unimax"] = "proportional"
    """explicit rates; proportional (T=1); temperature T; UniMax (budget, max_epochs)."""
    rates: dict[str, float] = dataclasses.field(default_factory=dict)
    """explicit: rate per task, each in [0, 1], summing to 1."""
    tasks: list[str] = dataclasses.field(default_factory=list)
    """Derived rules: the tasks to mix (empty means every task of the run)."""
    temperature: float = 1.0
    """temperature: p_i ∝ n_i^(1/T); 1 is proportional, large is uniform."""
    budget: int = 0
    """unimax: the total examples budget B (e.g. steps × batch examples)."""
    max_epochs: float = 1.0
    """unimax: at most this many epochs of any one task."""

    def __post_init__(self) -> None:
        if self.rule == "explicit":
            check(len(self.rates) > 0, "rates", "a rate per task for rule 'explicit'", self.rates)
            check_rates(self.rates)
        check(self.temperature > 0, "temperature", "a positive number", self.temperature)
        if self.rule == "unimax":
            check(self.budget > 0, "budget", "a positive integer for rule 'unimax'", self.budget)
            check(self.max_epochs > 0, "max_epochs", "a positive number", self.max_epochs)


@dataclasses.dataclass
class PhaseConfig:
    """A stretch of training with one mixture; optionally resets optimizer and LR at its start."""

    steps: int
    """Optimizer steps in this phase."""
    mixture: MixtureConfig = dataclasses.field(default_factory=MixtureConfig)
    """The task mixture of this phase."""
    reset: bool = False
    """Reset optimizer state and the LR schedule (warm-up included) at the phase start."""
    name: str = ""
    """A label for logs and metrics (e.g. ``pretrain``, ``finetune``)."""

    def __post_init__(self) -> None:
        check(self.steps > 0, "steps", "a positive integer", self.steps)


@dataclasses.dataclass
class EvalConfig:
    """What is measured at each evaluation."""

    every: int = 100
    """Evaluate every this many steps (and at the end, at fork steps and at listed eval steps)."""
    pairs: int = 500
    """Dev pairs (lm: document rows) per task for cross-entropy (and lm's bits per byte)."""
    bleu_pairs: int | None = None
    """Translation: dev pairs per task decoded for BLEU/chrF (0 disables decoding). Unset: 100
    for translation, 0 for lm (which decodes nothing)."""
    beam_size: int = 1
    """Translation: beam width for decoding; 1 is greedy."""
    test_at_end: bool = True
    """At each trial's end (a segment's end or a listed eval step), evaluate each task's best dev
    weights on its test set and ``data.eval_sets``."""
    keep_weights: bool = True
    """At each trial's end, keep each task's best dev weights for ``python -m ray_mtl.evaluate``
    (``<run_dir>/weights/``: one model copy per distinct best step, ``ray_mtl.checkpoint``)."""

    def __post_init__(self) -> None:
        check(self.every >= 1, "every", "a positive integer", self.every)
        check(self.pairs >= 1, "pairs", "a positive integer", self.pairs)
        ok = self.bleu_pairs is None or self.bleu_pairs >= 0
        check(ok, "bleu_pairs", "an integer >= 0", self.bleu_pairs)
        check(self.beam_size >= 1, "beam_size", "a positive integer", self.beam_size)


@dataclasses.dataclass
class ResourcesConfig:
    """Ray Train workers of one run (segment)."""

    num_workers: int = 1
    """Ray Train workers (DDP ranks)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractions allowed)."""
    use_gpu: bool = False
    """One GPU per worker: nccl and bf16 autocast."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "num_workers", "a positive integer", self.num_workers)
        ok = self.cpus_per_worker > 0
        check(ok, "cpus_per_worker", "a positive number", self.cpus_per_worker)


def check_pack_length(n: int, data: DataConfig, model: ModelConfig, batch_tokens: int) -> None:
    """Packed rows must hold the longest pair or document row (data.max_len), fit the model's
    positions, and a batch must hold one row (of two sides for translation)."""
    lo, hi, sides = data.max_len, model.max_len, 1 if data.kind == "lm" else 2
    ok = n == 0 or (lo <= n <= hi and sides * n <= batch_tokens)
    most = "batch_tokens" if sides == 1 else "batch_tokens/2"
    expected = f"0 or from data.max_len={lo} to model.max_len={hi}, at most {most}"
    check(ok, "pack_length", expected, n)


@dataclasses.dataclass(kw_only=True)
class RunSettings:
    """What a sweep's segments share with any training run: data, model, optimiser, evaluation,
    workers, batches, checkpoints. ``TrainConfig`` and ``SpaceConfig`` both extend it, so a new
    setting is one field here and reaches every segment of a sweep (``plan.segment_config``)."""

    kind: Kind = "translation"
    """What a task is: a translation direction (encoder-decoder, pairs) or, for ``lm``, a language
    (decoder-only language model, documents). It chooses the data, the model and the metrics;
    the loop, sampler, phases and schedule are the same."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """The prepared data to train on (in a space, ``tasks`` is filled from the task groups;
    ``kind`` is the run's)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The model."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimiser and LR schedule (reset at each phase that asks for it)."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Evaluation settings."""
    resources: ResourcesConfig = dataclasses.field(default_factory=ResourcesConfig)
    """Workers and devices of one run (segment)."""
    batch_tokens: int = 4096
    """Padded tokens (source + target; lm: document tokens) per optimizer step, summed over all
    workers."""
    pack_length: int = 0
    """0: batches of length-bucketed, padded rows. N > 0: pack several pairs into rows of N
    source and N target tokens, ``batch_tokens // (2 N)`` rows per batch (lm: documents into rows
    of N tokens, ``batch_tokens // N`` rows), attention staying within a pair or document: fixed
    shapes and little padding, for GPUs and ``compile``. From data.max_len to model.max_len."""
    compile: bool = False
    """``torch.compile`` the training forward (worth it on GPU; evaluation stays eager)."""
    checkpoint_every: int = 0
    """Also checkpoint every this many steps, for fault recovery (0: only fork steps and end)."""
    max_failures: int = 0
    """Ray Train restarts after a worker fault, each from the latest checkpoint."""

    def __post_init__(self) -> None:
        ok = self.data.kind in (self.kind, DataConfig().kind)
        check(ok, "data.kind", f"unset or the run's kind {self.kind!r}", self.data.kind)
        self.data.kind = self.kind
        self.data.check_kind("data.")
        if self.kind == "lm":  # nothing is decoded: translation's decoding settings are mistakes
            bleu, beam = self.eval.bleu_pairs, self.eval.beam_size
            why = "for kind 'lm' (decoding is for translation)"
            check(bleu in (None, 0), "eval.bleu_pairs", f"unset or 0 {why}", bleu)
            check(beam == 1, "eval.beam_size", f"1 {why}", beam)
        if self.eval.bleu_pairs is None:
            self.eval.bleu_pairs = 0 if self.kind == "lm" else 100
        check(self.batch_tokens >= 16, "batch_tokens", "an integer >= 16", self.batch_tokens)
        check_pack_length(self.pack_length, self.data, self.model, self.batch_tokens)
        ok = self.checkpoint_every >= 0
        check(ok, "checkpoint_every", "an integer >= 0", self.checkpoint_every)
        check(self.max_failures >= 0, "max_failures", "an integer >= 0", self.max_failures)


@dataclasses.dataclass(kw_only=True)
class TrainConfig(RunSettings):
    """One training run (a segment): the shared settings, its phases, seed and checkpoints."""

    phases: list[PhaseConfig]
    """The phases in order; a run from a fork checkpoint lists only the phases after the fork."""
    seed: int = 0
    """Seed for weights, sampling and dropout."""
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    """Extra global steps to evaluate at (e.g. every L+F of a static trunk)."""
    fork_steps: list[int] = dataclasses.field(default_factory=list)
    """Global steps at which a checkpoint is kept for other segments to start from."""
    rungs: list[int] = dataclasses.field(default_factory=list)
    """Global steps at which the run is evaluated and asks whether to go on (a pruned sweep's
    ``ray_mtl.prune``); without anyone to ask, it goes on."""
    init_from: str | None = None
    """A fork checkpoint (path or URI) to start from; its step becomes the start step."""
    run_dir: str = "runs/train"
    """Where metrics and checkpoints go (a local dir or a storage URI)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.phases) > 0, "phases", "at least one phase", self.phases)
        for name in ("fork_steps", "eval_steps", "rungs"):
            steps = getattr(self, name)
            check(all(s > 0 for s in steps), name, "positive steps", steps)


# --------------------------------------------------------------------------------------------
# Search space of a sweep
# --------------------------------------------------------------------------------------------

Method = Literal["two_phase", "scalarization", "restart", "temperature", "unimax"]
METHODS = typing.get_args(Method)
FORKING = ("two_phase", "restart")
"""Methods whose trials are branches from fork checkpoints (pruned and refined)."""
BRANCHES = "a space with branches (methods two_phase or restart)"


@dataclasses.dataclass
class TaskGroups:
    """Which tasks are high- and which low-resource."""

    high: list[str]
    """High-resource tasks: the two-phase method pre-trains on these alone."""
    low: list[str]
    """Low-resource tasks: together they get sampling rate w in the joint phase."""

    def __post_init__(self) -> None:
        check(len(self.high) > 0, "high", "at least one task", self.high)
        check(len(self.low) > 0, "low", "at least one task", self.low)
        for group in ("high", "low"):
            for i, t in enumerate(getattr(self, group)):
                check_name(t, f"{group}[{i}]")
        both = sorted(set(self.high) & set(self.low))
        check(not both, "low", "tasks not also listed as high", both)
        everything = self.high + self.low
        check(len(set(everything)) == len(everything), "high", "distinct tasks", everything)

    @property
    def all(self) -> list[str]:
        return self.high + self.low


def id_number(x: float) -> str:
    """A grid value as segment and trial ids spell it (``0.3`` -> ``w0.3``): six significant
    digits, so values that agree to six digits would share ids (GridConfig refuses them)."""
    return f"{x:g}"


def check_distinct_ids(values: list[float], field: str) -> None:
    """Each value of ``field`` names its own trials: no two may spell the same id."""
    seen: dict[str, int] = {}
    for i, x in enumerate(values):
        j = seen.setdefault(id_number(x), i)
        if j != i:
            raise UserError(
                f"{field}[{i}]: expected values distinct in trial ids (to 6 significant digits), "
                f"got {x!r}, which spells {id_number(x)!r} as {field}[{j}]={values[j]!r} does"
            )


@dataclasses.dataclass
class GridConfig:
    """The grid of a sweep; every method is run at a matched total of L + F steps."""

    pretrain_steps: list[int]
    """L values, sorted ascending, distinct: pre-training length (two-phase, restart) and the
    compute budget L + F of the static methods."""
    finetune_steps: int
    """F: steps of the joint fine-tuning phase."""
    low_rates: list[float] = dataclasses.field(default_factory=list)
    """w values in (0, 1): total sampling rate of the low-resource tasks (shared equally)."""
    temperatures: list[float] = dataclasses.field(default_factory=list)
    """T values for temperature sampling."""
    unimax_epochs: list[float] = dataclasses.field(default_factory=list)
    """Max epochs per task for UniMax."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """Seeds; every trial runs once per seed."""

    def __post_init__(self) -> None:
        L = self.pretrain_steps
        check(len(L) > 0, "pretrain_steps", "at least one L", L)
        check(all(x > 0 for x in L), "pretrain_steps", "positive steps", L)
        check(sorted(set(L)) == L, "pretrain_steps", "a sorted list without duplicates", L)
        check(self.finetune_steps > 0, "finetune_steps", "a positive integer", self.finetune_steps)
        for i, w in enumerate(self.low_rates):
            check(0 < w < 1, f"low_rates[{i}]", "a rate in (0, 1)", w)
        for i, t in enumerate(self.temperatures):
            check(t > 0, f"temperatures[{i}]", "a positive number", t)
        for i, e in enumerate(self.unimax_epochs):
            check(e > 0, f"unimax_epochs[{i}]", "a positive number", e)
        for name in ("low_rates", "temperatures", "unimax_epochs"):
            check_distinct_ids(getattr(self, name), name)
        check(len(self.seeds) > 0, "seeds", "at least one seed", self.seeds)
        check(len(set(self.seeds)) == len(self.seeds), "seeds", "distinct seeds", self.seeds)


@dataclasses.dataclass
class TrackingConfig:
    """Where a sweep's per-trial curves go besides its results."""

    tensorboard: bool = True
    """At the sweep's end, one TensorBoard run per trial, over its lineage, at
    ``<sweep>/tensorboard`` (``python -m ray_mtl.tracking``)."""
    mlflow: bool | str = False
    """Also one MLflow run per trial, in an experiment named after the sweep: true, a local
    store at ``<sweep>/mlruns``; a string, that tracking URI (``http://host:5000``, ``file:``...).
    Needs the ``tracking`` extra; a server is checked before the sweep starts."""

    def __post_init__(self) -> None:
        if isinstance(self.mlflow, str):
            check(bool(self.mlflow.strip()), "mlflow", "true, false or a tracking URI", self.mlflow)


@dataclasses.dataclass
class PruneConfig:
    """Stop branches that their method's others already beat, at rungs of their fine-tuning
    (``ray_mtl.prune``): a sweep's steps go to the branches that can still reach the front."""

    rule: Literal["scaled_pareto", "rank"] = "scaled_pareto"
    """scaled_pareto: stop a branch dominated by its method's front at the rung, shrunk toward
    the reference point by ``shrink`` (Ax); rank: stop it when its non-dominated rank (then
    crowding) among the branches at the rung is in the worst 1 - 1/eta (MOASHA)."""
    first_rung: int = 0
    """Steps after its fork of a branch's first rung (0: a quarter of grid.finetune_steps)."""
    factor: float = 2.0
    """Each later rung is this many times further from the fork (until the branch's end)."""
    shrink: float = 0.9
    """scaled_pareto: how far the front is kept from the reference point, in (0, 1) (near 1
    prunes what is barely dominated)."""
    eta: int = 3
    """rank: keep the best 1/eta at each rung; both rules: prune nothing before eta branches
    reached the rung."""

    def __post_init__(self) -> None:
        check(self.first_rung >= 0, "first_rung", "an integer >= 0", self.first_rung)
        check(self.factor > 1, "factor", "a number > 1", self.factor)
        check(0 < self.shrink < 1, "shrink", "a number in (0, 1)", self.shrink)
        check(self.eta >= 2, "eta", "an integer >= 2", self.eta)

    def rungs(self, finetune_steps: int) -> list[int]:
        """Steps since the fork at which a branch is judged."""
        from ray_mtl.prune import rung_steps

        return rung_steps(finetune_steps, self.first_rung or finetune_steps // 4, self.factor)


@dataclasses.dataclass
class RefineConfig:
    """New branches where the grid's front has the largest gaps (``ray_mtl.refine``), at rates
    and fork steps the grid did not try: each costs F steps (and, for a new L, the steps that
    continue its trunk there from the kept fork before it), never a pre-training."""

    budget_steps: int
    """Optimizer steps all new branches may take together (each takes F, and a new L's
    continuation of the trunk its steps)."""
    new_pretrain_steps: bool = True
    """Also propose values of L between those of the grid, each from a continuation of the
    trunk from the kept fork checkpoint before it; false: only the grid's fork steps."""
    methods: list[Method] = dataclasses.field(default_factory=lambda: ["two_phase"])
    """Methods to refine: two_phase, the one whose branches take any w from its trunks' forks
    (a restart branch's w is its static trunk's; the static methods have no forks)."""

    def __post_init__(self) -> None:
        check(self.budget_steps > 0, "budget_steps", "a positive integer", self.budget_steps)
        for i, m in enumerate(self.methods):
            why = "a method whose branches can take a new w from an existing fork: two_phase"
            check(m == "two_phase", f"methods[{i}]", why, m)


@dataclasses.dataclass(kw_only=True)
class SpaceConfig(RunSettings):
    """A sweep: tasks, methods, grid, and (from ``RunSettings``) what every segment shares."""

    name: str
    """Sweep name; results go to ``<storage>/<name>/``."""
    tasks: TaskGroups
    """High- and low-resource tasks."""
    grid: GridConfig
    """L × w (× T, UniMax epochs) × seeds."""
    methods: list[Method] = dataclasses.field(
        default_factory=lambda: ["two_phase", "scalarization"]
    )
    """Methods to compare."""
    tokens_per_example: int = 32
    """Mean padded tokens per pair (lm: per document row), to turn UniMax's step budget into an
    example budget."""
    max_concurrent: int = 0
    """Tune trials run at once, each training segments one after another (0: as many as the
    cluster's CPUs/GPUs fit)."""
    max_failures: int = 2
    """Restarts of a segment after a worker fault, each from its latest checkpoint (a sweep
    retries by default; a single run does not)."""
    storage: str = "runs"
    """Storage path: a local dir, an NFS path, or ``s3://`` / ``gs://`` on clusters."""
    keep_checkpoints: Literal["needed", "all"] = "needed"
    """needed: delete each checkpoint once the tree no longer needs it (kept: every segment's
    last, each running segment's latest, a fork until its branches have their own); all: keep
    every checkpoint (for later analysis; disk grows with every fork step)."""
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    """Experiment tracking: TensorBoard (and MLflow) runs per trial."""
    prune: PruneConfig | None = None
    """Stop branches (two_phase, restart) at rungs of their fine-tuning when their method's
    others beat them (unset: every branch runs its F steps)."""
    refine: RefineConfig | None = None
    """Try new rates w as new branches from existing fork checkpoints where the front has gaps,
    within a step budget (unset: the grid only)."""

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check(len(self.methods) > 0, "methods", f"one or more of {', '.join(METHODS)}", [])
        dup = len(set(self.methods)) != len(self.methods)
        check(not dup, "methods", "distinct methods", self.methods)
        needs_w = {"two_phase", "scalarization", "restart"} & set(self.methods)
        ok = not needs_w or self.grid.low_rates
        check(ok, "grid.low_rates", f"rates for {', '.join(sorted(needs_w))}", [])
        ok = "temperature" not in self.methods or self.grid.temperatures
        check(ok, "grid.temperatures", "temperatures for method 'temperature'", [])
        ok = "unimax" not in self.methods or self.grid.unimax_epochs
        check(ok, "grid.unimax_epochs", "epoch caps for method 'unimax'", [])
        ok = self.data.tasks in (self.tasks.all, DataConfig().tasks)
        check(ok, "data.tasks", "unset (the task groups name the tasks)", self.data.tasks)
        self.data.tasks = self.tasks.all
        self.data.check_task_keys("data.")
        super().__post_init__()
        check(self.tokens_per_example >= 2, "tokens_per_example", ">= 2", self.tokens_per_example)
        check(self.max_concurrent >= 0, "max_concurrent", ">= 0", self.max_concurrent)
        check(bool(self.storage), "storage", "a path or URI", self.storage)
        if self.prune is not None:
            F, forks = self.grid.finetune_steps, set(FORKING) & set(self.methods)
            first = self.prune.first_rung or F // 4
            check(0 < first < F, "prune.first_rung", f"0 or from 1 to {F - 1} (F - 1)", first)
            check(bool(forks), "prune", BRANCHES, self.methods)
        if self.refine is not None:
            F, r = self.grid.finetune_steps, self.refine
            fine = f"at least one fine-tuning phase (grid.finetune_steps = {F})"
            check(r.budget_steps >= F, "refine.budget_steps", fine, r.budget_steps)
            check(bool(r.methods), "refine.methods", "at least one method", r.methods)
            for i, m in enumerate(r.methods):
                check(m in self.methods, f"refine.methods[{i}]", "a method of the space", m)

    def settings(self) -> dict[str, Any]:
        """The ``RunSettings`` fields of this space, as keyword arguments of a ``TrainConfig``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)}
