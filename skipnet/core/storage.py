"""Where searches and checkpoints live: a local path or a storage URI (``s3://bucket/prefix``).

The one place that tells the two apart. A URI goes through pyarrow's filesystems
(``pyarrow.fs.FileSystem.from_uri``), which Ray Tune's storage uses too, so the same credentials
and ``AWS_ENDPOINT_URL`` reach both; a local path through the standard library. pyarrow is
imported inside the functions that need it: the core (checkpoints, training) imports this module
without paying for it. A missing file raises ``FileNotFoundError`` either way; anything else a
bucket refuses (no credentials, no such bucket, no answer) is an ``OSError``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from skipnet.core.files import write_text_atomic


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``file://``); local paths have no scheme."""
    return isinstance(path, str) and "://" in path


def resolve(path: str | os.PathLike) -> str:
    """A local path made absolute (Tune names trials and checkpoints by it); a URI unchanged."""
    return path if is_uri(path) else str(Path(path).resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...``: ``/``-joined for a URI (a ``Path`` would fold its ``//``)."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def uri_of(fs_path: str, filesystem) -> str:
    """A path on a pyarrow ``filesystem`` (as Tune's checkpoints and results give it:
    ``bucket/prefix/...`` without the scheme) as a path or URI anyone can open again."""
    kind = getattr(filesystem, "type_name", "local")
    if kind == "local" or is_uri(fs_path):
        return fs_path
    return f"{kind.rsplit('+', 1)[-1]}://{fs_path.lstrip('/')}"       # s3, gcs; py::fsspec+s3 -> s3


def _fs(uri: str):
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(uri)


def _kind(path: str):
    """pyarrow's FileType of ``path`` (a URI): NotFound, File or Directory."""
    fs, fs_path = _fs(path)
    return fs.get_file_info(fs_path).type


def exists(path: str | os.PathLike) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs
    return _kind(path) != pyarrow.fs.FileType.NotFound


def is_dir(path: str | os.PathLike) -> bool:
    """A directory (for a bucket: a prefix with objects below it)."""
    if not is_uri(path):
        return Path(path).is_dir()
    import pyarrow.fs
    return _kind(path) == pyarrow.fs.FileType.Directory


def read_text(path: str | os.PathLike) -> str:
    if not is_uri(path):
        return Path(path).read_text()
    fs, fs_path = _fs(path)
    with fs.open_input_stream(fs_path) as f:
        return f.read().decode()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write the whole file or nothing: a local file atomically (temporary file, rename; parent
    directories created), an object with one PUT (atomic in S3)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(path), text)
        return
    fs, fs_path = _fs(path)
    with fs.open_output_stream(fs_path) as f:
        f.write(text.encode())


def list_dir(path: str | os.PathLike) -> list[str]:
    """The names in a directory, sorted; [] when it does not exist."""
    if not is_uri(path):
        return sorted(p.name for p in Path(path).iterdir()) if Path(path).is_dir() else []
    import pyarrow.fs
    fs, fs_path = _fs(path)
    return sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True)))


def read_all(root: str | os.PathLike, name: str) -> dict[str, str]:
    """The text of every file called ``name`` anywhere below ``root``, by path (one listing, one
    filesystem for a bucket); {} when ``root`` does not exist."""
    if not is_uri(root):
        return {str(p): p.read_text() for p in sorted(Path(root).rglob(name)) if p.is_file()}
    import pyarrow.fs
    fs, fs_path = _fs(root)
    out = {}
    for info in fs.get_file_info(pyarrow.fs.FileSelector(fs_path, recursive=True, allow_not_found=True)):
        if info.base_name == name and info.type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[uri_of(info.path, fs)] = f.read().decode()
    return out


def mtime(path: str | os.PathLike) -> float | None:
    """When the file was last written (seconds since the epoch); None when it does not exist."""
    if not is_uri(path):
        return Path(path).stat().st_mtime if Path(path).is_file() else None
    fs, fs_path = _fs(path)
    info = fs.get_file_info(fs_path)
    return info.mtime.timestamp() if info.is_file and info.mtime is not None else None


def download(uri: str, local_dir: str | os.PathLike) -> str:
    """Copy the file or the directory tree at ``uri`` into ``local_dir`` (created); returns the
    local copy: ``local_dir/<file name>`` for a file, ``local_dir`` for a directory."""
    import pyarrow.fs
    fs, fs_path = _fs(uri)
    info = fs.get_file_info(fs_path)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or directory: {uri}")
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    if info.type == pyarrow.fs.FileType.File:
        target = local / info.base_name
        pyarrow.fs.copy_files(fs_path, str(target), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return str(target)
    pyarrow.fs.copy_files(fs_path, str(local.resolve()), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
    return str(local)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
    """A local path holding ``path``'s file or directory for the ``with`` block: a local path as
    it is, a URI downloaded into a temporary directory that is removed afterwards."""
    if not is_uri(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="skipnet-fetch-") as tmp:
        yield download(path, tmp)
