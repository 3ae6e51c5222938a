"""The handler package is byte-for-byte repeatable, so code is uploaded only when it changed."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from iotpipe import package
from iotpipe.package import PackageError, build_handler_zip, code_sha256


@pytest.fixture(autouse=True)
def _fresh_cache():
    package.clear_cache()
    yield
    package.clear_cache()


def _write(path: Path, text: str, mode: int = 0o644, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "handler"
    _write(root / "index.py", "from validate import ok\n\ndef lambda_handler(event, context):\n    return ok()\n")
    _write(root / "validate.py", "def ok():\n    return {'batchItemFailures': []}\n")
    _write(root / "__init__.py", '"""package marker, not shipped"""\n')
    _write(root / "__pycache__" / "index.cpython-311.py", "cache")
    _write(root / "tests" / "test_index.py", "def test(): pass\n")
    _write(root / "test_local.py", "def test(): pass\n")
    _write(root / "conftest.py", "")
    _write(root / ".hidden.py", "")
    return root


def _entries(data: bytes) -> list[zipfile.ZipInfo]:
    return zipfile.ZipFile(io.BytesIO(data)).infolist()


def test_two_builds_are_byte_identical(src: Path) -> None:
    first = build_handler_zip(src)
    package.clear_cache()
    second = build_handler_zip(src)
    assert first == second
    assert code_sha256(first) == code_sha256(second)


def test_same_source_with_other_mtimes_modes_and_order_gives_same_bytes(src: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "handler"
    other.mkdir(parents=True)
    # written in the opposite order, other modes and mtimes, CRLF line endings
    for name in ("validate.py", "index.py"):
        text = (src / name).read_text().replace("\n", "\r\n")
        (other / name).write_bytes(text.encode())
        (other / name).chmod(0o755)
        os.utime(other / name, (2_000_000_000, 2_000_000_000))
    assert build_handler_zip(other) == build_handler_zip(src)


def test_entries_are_normalised(src: Path) -> None:
    entries = _entries(build_handler_zip(src))
    names = [e.filename for e in entries]
    assert names == ["index.py", "validate.py"]  # sorted, at the root, nothing else
    for entry in entries:
        assert entry.date_time == (1980, 1, 1, 0, 0, 0)
        assert (entry.external_attr >> 16) & 0o777 == 0o644
        assert entry.create_system == 3
        assert entry.compress_type == zipfile.ZIP_DEFLATED
    assert not any("__pycache__" in n or n.startswith("test") or n == "__init__.py"
                   or n == "conftest.py" or n.startswith(".") for n in names)


def test_subpackages_keep_their_paths(src: Path) -> None:
    _write(src / "lib" / "__init__.py", "")
    _write(src / "lib" / "codec.py", "X = 1\n")
    _write(src / "lib" / "__pycache__" / "codec.py", "cache")
    names = [e.filename for e in _entries(build_handler_zip(src))]
    assert names == ["index.py", "lib/__init__.py", "lib/codec.py", "validate.py"]


def test_sha_changes_when_a_source_file_changes(src: Path) -> None:
    before = code_sha256(build_handler_zip(src))
    (src / "validate.py").write_text("def ok():\n    return {'batchItemFailures': [], 'v': 2}\n")
    after = code_sha256(build_handler_zip(src))  # no clear_cache: the cache notices the edit
    assert after != before


def test_code_sha256_is_lambdas_format(src: Path) -> None:
    data = build_handler_zip(src)
    assert code_sha256(data) == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert len(base64.b64decode(code_sha256(data))) == 32  # the raw digest, not hex


def test_built_once_per_process_while_unchanged(src: Path, monkeypatch) -> None:
    builds = []
    real = package._zip
    monkeypatch.setattr(package, "_zip", lambda files: builds.append(1) or real(files))
    first = build_handler_zip(src)
    assert build_handler_zip(src) is first
    assert len(builds) == 1


def test_zip_content_is_the_source(src: Path) -> None:
    archive = zipfile.ZipFile(io.BytesIO(build_handler_zip(src)))
    assert archive.read("index.py") == (src / "index.py").read_bytes()
    assert archive.testzip() is None


def test_a_directory_without_python_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="no Python files"):
        build_handler_zip(tmp_path / "empty")
    with pytest.raises(PackageError, match="does not exist"):
        build_handler_zip(tmp_path / "missing")


def test_the_real_handler_ships_index_at_the_root(tmp_path: Path) -> None:
    if not (package.HANDLER_DIR / "index.py").is_file():
        pytest.skip("iotpipe/handler/index.py not written yet")
    names = [e.filename for e in _entries(build_handler_zip())]
    assert "index.py" in names
    assert "__init__.py" not in names
    assert not any("__pycache__" in n for n in names)
    # a copy elsewhere (other checkout, other mtimes) packs to the same bytes
    copy = tmp_path / "checkout" / "handler"
    shutil.copytree(package.HANDLER_DIR, copy)
    assert build_handler_zip(copy) == build_handler_zip()
