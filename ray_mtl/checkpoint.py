"""Checkpoints of a training run: what they hold, writing them whole, reading them back safely.

    save_dir(directory, state)                          # state.pt + meta.json, whole or not at all
    state = load(uri, cfg, prepared)                    # weights_only; model + data checked
    state = read_dir(directory)                         # a run's own checkpoint (fault recovery)
    save_weights(run_dir, step=..., ...)                # a trial end's best-per-task weights
    record, weights = load_weights(run_dir, step)       # what ray_mtl.evaluate scores

A checkpoint is the full state of a run at a step: weights, optimizer, sampler, RNG, schedule, the
best-per-task record with its weights, and what it was trained on (model config, vocabulary size,
data manifest hash). ``meta.json`` repeats the small fields so tools can read them without torch.
A trial's end also keeps each task's best dev weights, without optimizer (the checkpoints that
hold them are collected once their branches have started): ``weights/end_<N>.json`` names the
best step of each task, and ``weights/best_<S>.pt`` holds the weights of step S.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ray_mtl.config import TrainConfig, to_dict
from ray_mtl.errors import UserError
from ray_mtl.schedule import Schedule
from ray_mtl.storage import (
    atomic_write_bytes,
    atomic_write_json,
    filesystem,
    is_file,
    join,
    read_text,
    write_bytes,
    write_text,
)

STATE_FILE = "state.pt"
META_FILE = "meta.json"
META_KEYS = ("segment", "step", "model", "vocab_size", "manifest_hash")
WEIGHTS_DIR = "weights"


def save_dir(directory: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint (``state.pt`` + ``meta.json``) so that it appears whole or not at all."""
    buf = io.BytesIO()
    torch.save(state, buf)
    directory = Path(directory)
    atomic_write_bytes(directory / STATE_FILE, buf.getvalue())
    atomic_write_json(directory / META_FILE, {k: state[k] for k in META_KEYS if k in state})


def read_dir(directory: str | Path) -> dict[str, Any]:
    """The state in a local checkpoint dir (``weights_only``: no code is unpickled)."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def load(uri: str, cfg: TrainConfig, vocab_size: int, manifest_hash: str) -> dict[str, Any]:
    """Load a checkpoint dir (local path or storage URI) to start ``cfg`` from.

    It must hold a model of ``cfg.model`` over the same vocabulary, trained on the same prepared
    data (manifest hash): a tokenizer with the same vocabulary size but other pieces would load
    and silently train on meaningless embeddings. The error says what differs.
    """
    blob = _read_blob(join(uri, STATE_FILE), uri, f"no checkpoint there, {STATE_FILE} not readable")
    state = _unpickle(blob, uri)
    if not isinstance(state, dict) or "model_state" not in state:
        raise UserError(f"{uri}: not a ray_mtl checkpoint (no model_state)")
    theirs, ours = state.get("model"), to_dict(cfg.model)
    if theirs != ours or state.get("vocab_size") != vocab_size:
        diff = sorted(k for k in ours if (theirs or {}).get(k) != ours[k])
        if state.get("vocab_size") != vocab_size:
            diff.append(f"vocab_size ({state.get('vocab_size')} vs {vocab_size})")
        raise UserError(f"{uri}: checkpoint is for another model config (differs in {diff})")
    if state.get("manifest_hash") != manifest_hash:
        raise UserError(
            f"{uri}: checkpoint was trained on other prepared data (manifest hash "
            f"{state.get('manifest_hash')}, this run's data has {manifest_hash}); expected a "
            "checkpoint of a run with the same data settings and tokenizer"
        )
    return state


def _read_blob(uri: str, shown: str, what: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{shown}: {what} ({e})") from None


def _unpickle(blob: bytes, uri: str) -> Any:
    # A corrupt file can make torch warn before it fails ("Detected pickle protocol 206"): the
    # error says it all, so warnings are shown only for a file that loads.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a corrupt file
            first = (str(e).splitlines() or [""])[0]  # torch's messages run to several lines
            raise UserError(f"{uri}: corrupt checkpoint ({type(e).__name__}: {first})") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return state


def weights_uri(run_dir: str, step: int) -> str:
    """The record of a trial that ends at ``step`` of a run: each task's best dev step."""
    return join(run_dir, WEIGHTS_DIR, f"end_{step:08d}.json")


def best_weights_uri(run_dir: str, step: int) -> str:
    """The weights of a run at ``step``, one of its trials' best dev steps (stored once however
    many trial ends of the run share it, as those along a static trunk often do)."""
    return join(run_dir, WEIGHTS_DIR, f"best_{step:08d}.pt")


def save_weights(
    run_dir: str, *, step: int, cfg: TrainConfig, vocab_size: int, manifest_hash: str, best: Any
) -> None:
    """Keep each task's best dev weights at a trial's end (``BestPerTask``): the weights of each
    best step not yet kept, then the record naming them (last, so it names only whole files)."""
    for s, weights in best.weights.items():
        uri = best_weights_uri(run_dir, s)
        if not is_file(uri):
            buf = io.BytesIO()
            torch.save(weights, buf)
            write_bytes(uri, buf.getvalue())
    record = {
        "step": step,
        "kind": cfg.kind,
        "model": to_dict(cfg.model),
        "vocab_size": vocab_size,
        "manifest_hash": manifest_hash,
        "best": best.best,
    }
    write_text(weights_uri(run_dir, step), json.dumps(record, sort_keys=True))


def load_weights(run_dir: str, step: int) -> tuple[dict[str, Any], dict[str, dict]]:
    """A trial end's record (``save_weights``) and, per task, the state dict of its best dev
    step."""
    uri = weights_uri(run_dir, step)
    try:
        record = json.loads(read_text(uri))
        best = {t: int(b["step"]) for t, b in record["best"].items()}
    except FileNotFoundError:
        raise UserError(f"{uri}: no saved weights there") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{uri}: not a ray_mtl weights record ({type(e).__name__}: {e})") from None
    weights = {}
    for task, s in best.items():
        uri = best_weights_uri(run_dir, s)
        weights[task] = _unpickle(_read_blob(uri, uri, "no saved weights there"), uri)
    return record, weights


def is_last(cfg: TrainConfig, state: dict[str, Any]) -> bool:
    """Whether a checkpoint ``state`` of run ``cfg`` is its last (every run keeps one)."""
    schedule = Schedule(cfg.phases)
    schedule.load_state_dict(state["schedule"])
    return int(state["step"]) == schedule.end_step


def capture(
    *,
    step: int,
    steps_since_reset: int,
    schedule: Schedule,
    cfg: TrainConfig,
    vocab_size: int,
    manifest_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: Any,
    best: Any,
) -> dict[str, Any]:
    """The state of a run after ``step`` steps: what ``restore`` and ``load`` read back."""
    return {
        "step": step,
        "steps_since_reset": steps_since_reset,
        "schedule": schedule.state_dict(),
        "model": to_dict(cfg.model),
        "vocab_size": vocab_size,
        "manifest_hash": manifest_hash,
        "model_state": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": torch.get_rng_state(),
        **best.state_dict(step),
    }


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: Any,
) -> None:
    """Weights, optimizer, sampler stream and RNG from ``state`` (a fork or the run's own)."""
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer"])  # the caller replaces it if its phase resets
    sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["rng"])
