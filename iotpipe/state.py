"""The per-env state file and lock.

The state file is a write-ahead record, not the source of truth: AWS is. Before a create
iotpipe writes the intent ("creating", with the name); right after it, the ids. Each write is
atomic (temp file, fsync, rename), so an interrupted run leaves either the old or the new
file, and the intent proves that a half-made resource without tags is ours to finish.

The lock follows Terraform's lock info (ID, Operation, Who, Created) and is taken with
``O_CREAT | O_EXCL``, which the filesystem makes atomic.

Where the bytes live is a *backend* (``LocalBackend`` here, ``S3Backend`` in
``iotpipe/s3state.py``): the store keeps every rule (schema, write-ahead, lock policy) once,
and a backend only reads, writes conditionally, and creates or removes the lock atomically.
A write names the token (the S3 ETag) of what was read, so a run that lost a race is told so
instead of overwriting the other run's record.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from iotpipe.errors import LockHeldError, StateError
from iotpipe.progress import Progress, ProgressSink, ignore

SCHEMA_VERSION = 1
LOCK_REPORT_EVERY_S = 5.0  # a lock wait is said at once, then every few seconds
# A lock older than this, whoever holds it, is reported as probably stale (and --force may take it).
STALE_LOCK_AGE_S = 4 * 3600.0

Status = Literal["creating", "present"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResourceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    name: str
    status: Status
    ids: dict[str, str] = Field(default_factory=dict)  # arn, id, ... as the resource reports them
    created_at: str
    updated_at: str


class StateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int
    env: str
    region: str
    account: str | None = None
    resources: dict[str, ResourceRecord] = Field(default_factory=dict)


class Backend(Protocol):
    """Where one env's state and lock live; every write is conditional on what was read."""

    where: str  # the state's address, for messages
    lock_where: str
    location: Any  # what --state names (S3); the local backend's root
    takes_over_dead_local_holder: bool  # a lock of a gone process on this host is taken at once

    def read(self) -> tuple[str | None, str | None]:
        """The state text (None: no state yet) and the token a later write must name."""

    def write(self, text: str, token: str | None) -> str | None:
        """Replace the state only if it is still what ``token`` names; the new token."""

    def delete(self, token: str | None) -> None: ...

    def create_lock(self, info: dict[str, Any]) -> bool:
        """Create the lock atomically; False when it exists."""

    def read_lock(self) -> dict[str, Any] | None: ...

    def remove_lock(self, expected: dict[str, Any]) -> bool:
        """Remove the lock only while it is ``expected`` (same ID); whether it was removed."""


class LocalBackend:
    """``<root>/state/<env>.json`` and ``<root>/locks/<env>.lock`` (the default)."""

    takes_over_dead_local_holder = True

    def __init__(self, root: Path, env: str) -> None:
        self.root = Path(root)
        self.env = env
        self.path = self.root / "state" / f"{env}.json"
        self.lock_path = self.root / "locks" / f"{env}.lock"
        self.where = str(self.path)
        self.lock_where = str(self.lock_path)
        self.location = self.root

    def read(self) -> tuple[str | None, str | None]:
        for place in (self.root, self.path.parent):
            if place.exists() and not place.is_dir():
                raise StateError(f"state directory {place} is a file: pass --state-dir a directory "
                                 "(or move the file aside)")
        if not self.path.exists():
            return None, None
        try:
            return self.path.read_text(encoding="utf-8"), None
        except (OSError, UnicodeDecodeError) as err:
            raise StateError(f"state file {self.path} is unreadable or corrupt ({err.__class__.__name__}): "
                             "move it aside to rebuild it from AWS") from None

    def write(self, text: str, token: str | None) -> str | None:
        try:
            self._write(text)
        except OSError as err:
            # A read-only or full disk is the operator's to fix, and nothing half-written stays.
            raise StateError(f"cannot write state file {self.path}: {_why(err)}") from None
        return None

    def delete(self, token: str | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.env}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def create_lock(self, info: dict[str, Any]) -> bool:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateError(f"cannot create the lock directory {self.lock_path.parent}: {_why(err)}") from None
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise StateError(f"cannot create lock file {self.lock_path}: {_why(err)}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            raise StateError(f"cannot write lock file {self.lock_path}: {_why(err)}") from None
        return True

    def read_lock(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.lock_path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or damaged: treated as held by someone unknown

    def remove_lock(self, expected: dict[str, Any]) -> bool:
        current = self.read_lock()
        if current is None or current.get("ID") != expected.get("ID"):
            return False
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
        return True


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a StateStore method under the store's mutex.

    The engine converges several resources at once, each recording itself as it goes: a
    load-modify-write from two threads at once would lose one of the records (and, on the S3
    backend, send a stale ETag). Each write-ahead record stays one atomic, conditional replace.
    """
    @wraps(method)
    def serialised(self: StateStore, *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            return method(self, *args, **kwargs)

    return serialised


class StateStore:
    """One env's state and lock, in a backend (local files unless given one).

    ``root`` is always a local directory: device private keys live under it whatever the
    backend, because they must never leave the operator's machine.
    """

    def __init__(self, root: Path, env: str, region: str, backend: Backend | None = None) -> None:
        if not env or env in {".", ".."} or "/" in env or "\\" in env:
            # Every caller validates the env first; this keeps a slip from reaching the filesystem.
            raise StateError(f"env {env!r} cannot name a state file")
        self.root = Path(root)
        self.env = env
        self.region = region
        self.backend: Backend = backend or LocalBackend(self.root, env)
        local = self.backend if isinstance(self.backend, LocalBackend) else None
        self.path: Any = local.path if local else self.backend.where
        self.lock_path: Any = local.lock_path if local else self.backend.lock_where
        self.force = False  # --force: a lock recognised as stale is taken over
        self._data: StateFile | None = None
        self._token: str | None = None
        self.on_progress: ProgressSink = ignore
        self._mutex = threading.RLock()  # see _serialised
        # A write of this run that failed (until the next reload): the engine starts no other
        # resource after it, as its write-ahead records could not be trusted to land.
        self.write_error: BaseException | None = None

    # -- reading ---------------------------------------------------------------------------
    @_serialised
    def load(self) -> StateFile:
        """Read and check the state; a missing one is an empty state, anything odd an error."""
        if self._data is not None:
            return self._data
        text, token = self.backend.read()
        if text is None:
            self._token = None
            self._data = StateFile(schema_version=SCHEMA_VERSION, env=self.env, region=self.region)
            return self._data
        self._data = self.parse(text)
        self._token = token
        return self._data

    def parse(self, text: str) -> StateFile:
        where = self.backend.where
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise StateError(f"state file {where} is unreadable or corrupt ({err.__class__.__name__}): "
                             "move it aside to rebuild it from AWS") from None
        if not isinstance(raw, dict):
            raise StateError(f"state file {where} is not a JSON object: move it aside to rebuild it from AWS")
        version = raw.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise StateError(f"state file {where} has schema version {version}, newer than this "
                             f"iotpipe understands ({SCHEMA_VERSION}): upgrade iotpipe")
        try:
            data = StateFile.model_validate(raw)
        except ValidationError as err:
            loc = ".".join(str(p) for p in err.errors()[0]["loc"])
            raise StateError(f"state file {where} is invalid at {loc or 'top level'}: "
                             "move it aside to rebuild it from AWS") from None
        if data.env != self.env or (self.region and data.region != self.region):
            raise StateError(f"state file {where} belongs to env {data.env!r} in {data.region}, "
                             f"not env {self.env!r} in {self.region}")
        return data

    @_serialised
    def reload(self) -> StateFile:
        """Forget the cached copy and read the state again (after waiting for another run)."""
        self._data = None
        self.write_error = None
        return self.load()

    @_serialised
    def check_account(self, account: str) -> None:
        data = self.load()
        if data.account and data.account != account:
            raise StateError(f"state file {self.path} belongs to account {data.account}, "
                             f"but the credentials are for account {account}")

    @_serialised
    def get(self, logical_id: str) -> ResourceRecord | None:
        return self.load().resources.get(logical_id)

    # -- writing (each call is one atomic, conditional replace) ------------------------------
    @_serialised
    def set_account(self, account: str) -> None:
        data = self.load()
        if data.account != account:
            data.account = account
            self._save()

    @_serialised
    def intend(self, logical_id: str, type_: str, name: str) -> None:
        """Write ahead: we are about to create ``name``."""
        now = _now()
        data = self.load()
        previous = data.resources.get(logical_id)
        data.resources[logical_id] = ResourceRecord(
            type=type_, name=name, status="creating", ids=previous.ids if previous else {},
            created_at=previous.created_at if previous else now, updated_at=now)
        self._save()

    @_serialised
    def record(self, logical_id: str, type_: str, name: str, ids: dict[str, str]) -> None:
        """The resource exists: store its ids (skipped when nothing changed, to keep reads free)."""
        now = _now()
        data = self.load()
        previous = data.resources.get(logical_id)
        clean = {k: str(v) for k, v in ids.items() if v is not None}
        if previous and previous.status == "present" and previous.ids == clean and previous.name == name:
            return
        data.resources[logical_id] = ResourceRecord(
            type=type_, name=name, status="present", ids=clean,
            created_at=previous.created_at if previous else now, updated_at=now)
        self._save()

    @_serialised
    def forget(self, logical_id: str) -> None:
        data = self.load()
        if data.resources.pop(logical_id, None) is not None:
            self._save()

    @_serialised
    def remove_if_empty(self) -> None:
        data = self.load()
        if not data.resources:
            self.backend.delete(self._token)
            self._token = None

    @_serialised
    def replace(self, data: StateFile) -> None:
        """Write ``data`` as the whole state (state migrate), conditional like every write."""
        self.load()
        self._data = data
        self._save()

    def _save(self) -> None:
        assert self._data is not None
        text = self._data.model_dump_json(indent=2) + "\n"
        try:
            self._token = self.backend.write(text, self._token)
        except BaseException as err:
            self.write_error = err
            raise

    # -- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(
        self,
        operation: str,
        *,
        timeout: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> Iterator[dict[str, Any]]:
        """Hold the env's lock for the duration of ``operation``.

        A local lock whose holder was a process on this host that no longer runs is taken over;
        a stale lock (that, or older than STALE_LOCK_AGE_S) elsewhere only with ``force``;
        anything else waits up to ``timeout`` seconds, then fails naming the holder.
        """
        info = lock_info(operation)
        started = clock()
        deadline = started + timeout
        next_report = started
        vanished = 0
        while not self.backend.create_lock(info):
            holder = self.backend.read_lock()
            if holder is None:
                vanished += 1  # released between our attempt and the read: try again at once
                if vanished > 5:
                    raise LockHeldError(f"the lock of env {self.env!r} ({self.backend.lock_where}) could "
                                        "not be created although none is held (concurrent runs): try again")
                continue
            stale = stale_reason(holder)
            if stale and (self.force or (self.backend.takes_over_dead_local_holder and _is_stale(holder))):
                self.on_progress(Progress(
                    "lock-takeover", f"taking over the lock of env {self.env!r} left by "
                    f"{describe_lock(holder)}: {stale}", {"holder": holder}))
                self.backend.remove_lock(holder)
                continue
            if clock() >= deadline:
                unlock = f"iotpipe unlock --env {self.env}" + (
                    "" if isinstance(self.backend, LocalBackend) else f" --state {self.backend.location}")
                hint = (f"it looks stale ({stale}): pass --force to take it over, or run `{unlock}`"
                        if stale else f"wait, pass --lock-timeout, or run `{unlock}` if that run is gone")
                raise LockHeldError(f"env {self.env!r} is locked by {describe_lock(holder)}; {hint}")
            if clock() >= next_report:
                waited = clock() - started
                self.on_progress(Progress(
                    "lock-wait", f"waiting for the lock of env {self.env!r} held by {describe_lock(holder)}: "
                    f"{waited:.0f} s of {timeout:.0f} s", {"holder": holder, "waited": waited, "timeout": timeout}))
                next_report += LOCK_REPORT_EVERY_S
            sleep(min(0.5, max(0.0, deadline - clock())))  # no waiter exists for a lock object
        try:
            yield info
        finally:
            self.backend.remove_lock(info)

    def read_lock(self) -> dict[str, Any] | None:
        return self.backend.read_lock()

    def force_unlock(self, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Remove the lock; with ``expected``, only while it is still that holder's."""
        holder = self.backend.read_lock()
        if holder is None:
            return None
        if expected is not None and holder.get("ID") != expected.get("ID"):
            raise LockHeldError(f"the lock of env {self.env!r} changed hands while you were asked: it is now "
                                f"held by {describe_lock(holder)}; nothing was removed")
        if not self.backend.remove_lock(holder):
            raise LockHeldError(f"the lock of env {self.env!r} changed while it was being removed; "
                                "nothing was removed: run `iotpipe unlock` again")
        return holder


def lock_info(operation: str) -> dict[str, Any]:
    host = socket.gethostname()
    return {"ID": str(uuid.uuid4()), "Operation": operation, "Who": f"{_user()}@{host}",
            "User": _user(), "Host": host, "Pid": os.getpid(), "Created": _now()}


def lock_age_s(holder: dict[str, Any], now: datetime | None = None) -> float | None:
    try:
        created = datetime.strptime(str(holder.get("Created")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return ((now or datetime.now(UTC)) - created).total_seconds()


def stale_reason(holder: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why a lock looks abandoned: its process is gone (this host), or it is very old."""
    if _is_stale(holder):
        return "that process is gone"
    age = lock_age_s(holder, now)
    if age is not None and age > STALE_LOCK_AGE_S:
        return f"it is {age / 3600:.1f} hours old"
    return None


def _why(err: OSError) -> str:
    reasons = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the device",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a part of the path is a file"}
    return reasons.get(err.errno or 0, err.strerror or str(err)) + " (fix it, or point --state-dir elsewhere)"


def describe_lock(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown holder (lock file unreadable)"
    return (f"pid {holder.get('Pid')} on {holder.get('Host')} ({holder.get('Who')}), "
            f"operation {holder.get('Operation')}, since {holder.get('Created')}")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return str(os.getuid())


def holder_is_alive(holder: dict[str, Any] | None) -> bool:
    """True when the lock's holder is a process on this host that still runs.

    `unlock` must not pull a lock from under a live run: two runs at once can each create
    the same resource, or one destroy what the other is building.
    """
    if not holder or holder.get("Host") != socket.gethostname():
        return False
    pid = holder.get("Pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _is_stale(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process is gone."""
    if holder.get("Host") != socket.gethostname():
        return False
    pid = holder.get("Pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
