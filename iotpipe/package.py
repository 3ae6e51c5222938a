"""The Lambda deployment package: a byte-for-byte repeatable zip of ``iotpipe/handler``.

Why repeatable: the function step decides whether to upload code by comparing
base64(sha256(zip)) with the function's ``CodeSha256`` (Ansible's ``lambda`` module does the
same). A zip that embeds file mtimes, the builder's umask or the directory listing order
would hash differently on every checkout and re-upload on every ``up``. So, like Chalice's
``ChaliceZipFile``, every entry gets:

- a fixed timestamp (1980-01-01 00:00:00, the earliest a zip can hold),
- a normalised mode (regular file, 0o644) and a fixed "made by" system (Unix),
- sorted names, so the filesystem's listing order does not matter,
- LF line endings (a Windows checkout with ``autocrlf`` ships the same bytes),
- DEFLATE at a fixed level.

The handler files go to the zip root so that the handler string ``index.lambda_handler``
resolves. ``handler/__init__.py`` is left out: at the root it would be a stray module named
``__init__`` (``index.py`` falls back from its package-relative import to a top-level one).
Caches (``__pycache__``), tests and hidden files are never shipped.

The same source yields the same bytes with the same zlib; a different zlib build may
compress differently, which costs one (harmless) code upload from that machine.

This module reads the handler files as data only; it imports nothing from them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

from iotpipe.errors import IotpipeError

HANDLER_DIR = Path(__file__).resolve().parent / "handler"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644
COMPRESS_LEVEL = 9
_UNIX = 3  # ZipInfo.create_system for Unix: set explicitly, the default depends on the builder's OS
_S_IFREG = 0o100000
_SKIP_DIRS = {"__pycache__", "tests", "test"}

# source directory -> (fingerprint of its files, zip bytes): the latest build per directory
_cache: dict[str, tuple[tuple[tuple[str, int, int], ...], bytes]] = {}


class PackageError(IotpipeError):
    """The handler directory cannot be packaged (missing, or holds no Python files)."""


def handler_files(source_dir: Path | str | None = None) -> list[tuple[str, Path]]:
    """The (zip name, path) pairs to ship from ``source_dir``, sorted by zip name."""
    root = Path(source_dir) if source_dir is not None else HANDLER_DIR
    if not root.is_dir():
        raise PackageError(f"handler directory {root} does not exist")
    files: list[tuple[str, Path]] = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        parts = rel.parts
        if any(p in _SKIP_DIRS or p.startswith(".") for p in parts[:-1]):
            continue
        name = parts[-1]
        if name.startswith(".") or name == "conftest.py" or name.startswith("test_") \
                or name.endswith("_test.py"):
            continue
        if rel == Path("__init__.py"):
            continue
        if not path.is_file():
            continue
        files.append((rel.as_posix(), path))
    if not files:
        raise PackageError(f"handler directory {root} holds no Python files to package")
    return sorted(files)


def _fingerprint(files: list[tuple[str, Path]]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for name, path in files:
        st = path.stat()
        out.append((name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def build_handler_zip(source_dir: Path | str | None = None) -> bytes:
    """The deployment zip of ``source_dir`` (default ``iotpipe/handler``), as bytes.

    Built once per process and source state: the cache key holds every file's name, mtime
    and size, so an edited file (a test rewriting the source, a long-lived process) rebuilds,
    while the several ``desired``/``create``/``update`` calls of one run share one build.
    """
    root = Path(source_dir) if source_dir is not None else HANDLER_DIR
    files = handler_files(root)
    key, fingerprint = str(root.resolve()), _fingerprint(files)
    cached = _cache.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    data = _zip(files)
    _cache[key] = (fingerprint, data)
    return data


def _zip(files: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=COMPRESS_LEVEL) as archive:
        for name, path in files:
            content = path.read_bytes().replace(b"\r\n", b"\n")
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.create_system = _UNIX
            info.external_attr = (_S_IFREG | FILE_MODE) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content, compress_type=zipfile.ZIP_DEFLATED,
                             compresslevel=COMPRESS_LEVEL)
    return buffer.getvalue()


def code_sha256(zip_bytes: bytes) -> str:
    """Lambda's ``CodeSha256`` of a package: base64 of the raw sha256 digest (not hex)."""
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode("ascii")


def clear_cache() -> None:
    """Forget built packages (tests that swap the handler source call this)."""
    _cache.clear()
