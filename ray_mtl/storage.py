"""Files that are never seen half-written, on a local disk or a storage URI.

Every artefact (manifest, shards, results, reports) is written to a temporary name in the same
directory and then renamed into place, so a reader or a resumed sweep sees the old file or the
new one, never a torn one. Storage paths may be local dirs, NFS mounts or ``s3://``/``gs://``
URIs, including S3-compatible stores given through pyarrow's URI options
(``s3://bucket/path?endpoint_override=127.0.0.1:9000&scheme=http``); ``filesystem(uri)`` returns
the pyarrow filesystem and the path inside it, and ``join`` builds URIs under another one with
its options kept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_mtl.errors import UserError


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``uri`` and the path inside it (local paths made absolute)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{uri}: cannot open storage ({e})") from None


def join(uri: str, *parts: str) -> str:
    """``uri/part/...``, keeping a URI's options (``?endpoint_override=...``) at its end."""
    base, sep, query = str(uri).partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def parent(uri: str) -> str:
    """The dir holding ``uri`` (its options kept)."""
    base, sep, query = str(uri).partition("?")
    return base.rstrip("/").rsplit("/", 1)[0] + sep + query


def with_path(uri: str, path: str) -> str:
    """``path`` (as ``filesystem(uri)`` names paths) as a URI on ``uri``'s storage: Ray's
    ``Checkpoint.path`` drops the scheme and options, and a URI needs both to be opened."""
    if "://" not in uri:
        return path
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{path.lstrip('/')}" + ("?" + rest.partition("?")[2] if "?" in rest else "")


def check_storage(uri: str) -> None:
    """Fail now, naming ``uri``, if its storage cannot be reached or its bucket does not exist
    (rather than after the first segment has trained)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        ensure_writable_dir(path, "storage path")
        return
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise UserError(f"{uri}: cannot reach storage ({e})") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{uri}: bucket {bucket!r} not found (expected an existing bucket)")


def ray_storage(uri: str) -> tuple[pafs.FileSystem | None, str]:
    """``uri`` as Ray's (storage_filesystem, storage_path): no filesystem for a local path."""
    return filesystem(uri) if "://" in uri else (None, uri)


# Write failures the user fixes (a full disk, a quota, a read-only mount): one line, no traceback.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _as_user_error(path: str | Path, e: BaseException) -> None:
    """Raise ``e`` as a UserError naming ``path`` if it is a write failure the user fixes."""
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        why = os.strerror(e.errno).lower()
        expected = "expected a writable dir with free space"
        raise UserError(f"{path}: cannot write ({why}); {expected}") from None


def ensure_writable_dir(path: str | Path, what: str = "output dir") -> Path:
    """Create ``path`` if needed and prove it is writable, or raise a UserError naming it."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{path}: {what} is not writable ({e.strerror or e})") from None
    return path


def _write_then_rename(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write`` a temp file beside ``path``, then rename it over ``path``: whole or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _as_user_error(path, e)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same dir and an atomic rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _write_then_rename(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write a Parquet file that appears whole or not at all."""
    _write_then_rename(path, lambda tmp: pq.write_table(table, tmp))


def write_parquet(uri: str, table: pa.Table) -> None:
    """Write Parquet to a local path (temp file + rename) or a URI (object PUTs are atomic)."""
    if "://" not in uri:
        atomic_write_parquet(uri, table)
        return
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def read_parquet(uri: str) -> pa.Table:
    """A Parquet file read through one open handle. Reading by path looks at the file's size
    first and its pages later, so a file replaced in between (a running sweep's rows, renamed
    over at each report) reads torn: "Page was smaller than expected". A handle keeps one
    version whole."""
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


def write_text(uri: str, text: str) -> None:
    """Write text to a local path (temp file + rename) or a URI (object PUTs are atomic)."""
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str | Path) -> str:
    """UTF-8 text of a local path or a URI (FileNotFoundError if there is none)."""
    if "://" not in str(uri):
        return Path(uri).read_text(encoding="utf-8")
    fs, path = filesystem(str(uri))
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write bytes to a local path (temp file + rename) or a URI (object PUTs are atomic)."""
    if "://" not in uri:
        atomic_write_bytes(uri, data)
        return
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def is_file(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(uri: str) -> list[str]:
    """Names of the entries of a dir (empty if it does not exist)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)))


def remove_entries(uri: str, names: set[str] | frozenset[str]) -> None:
    """Delete the entries of dir ``uri`` named in ``names`` (files, or dirs with all they hold);
    anything else in it stays."""
    fs, path = filesystem(uri)
    for name in sorted(set(list_dir(uri)) & set(names)):
        entry = f"{path}/{name}"
        if fs.get_file_info(entry).type == pafs.FileType.Directory:
            fs.delete_dir(entry)
        else:
            fs.delete_file(entry)


def remove_dir(uri: str) -> None:
    """Delete a dir and all it holds; nothing if it is absent."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def remove_file(uri: str) -> None:
    """Delete one file; nothing if it is absent."""
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success it replaces ``final`` in one rename.

    On any error the temp dir is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _as_user_error(final, e)
        raise
