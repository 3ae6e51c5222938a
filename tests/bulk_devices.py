"""Helpers for the bulk device tests: a model clock, a simulated kill, and moto made
thread-safe (AWS is; moto's in-process IoT backend iterates dicts other threads change)."""

from __future__ import annotations

import threading

import pytest

MUTATING_IOT = ("Create", "Attach", "Update", "Delete", "Detach")


@pytest.fixture(autouse=True)
def serial_moto(monkeypatch):
    """One request at a time inside moto, as a real service would look to its callers:
    concurrent DeleteCertificate/AttachThingPrincipal calls otherwise fail inside moto with
    'OrderedDict mutated during iteration', a fault of the emulator, not of the caller."""
    from moto.core.botocore_stubber import BotocoreStubber

    lock = threading.Lock()
    real = BotocoreStubber.__call__

    def serial(self, *args, **kwargs):
        with lock:
            return real(self, *args, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", serial)


_KEYS: list = []


@pytest.fixture(autouse=True)
def one_rsa_key(monkeypatch):
    """moto makes a 2048-bit RSA key for every certificate, a tenth of a second of CPU each:
    the emulator's cost, not the code's. Here every certificate reuses one key, so twenty
    devices cost what one does (the tests never compare keys across devices)."""
    import types

    from cryptography.hazmat.primitives.asymmetric import rsa
    from moto.iot import models

    if not _KEYS:
        _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    monkeypatch.setattr(models, "rsa", types.SimpleNamespace(
        generate_private_key=lambda *a, **k: _KEYS[0], RSAPrivateKey=rsa.RSAPrivateKey))


class ModelClock:
    """Model time per thread: each thread's clock moves only by its own sleeps, as if AWS
    answered instantly; the run's model time is the latest any thread reached."""

    def __init__(self) -> None:
        self._times: dict[int, float] = {}
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self._times.setdefault(threading.get_ident(), 0.0)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            me = threading.get_ident()
            self._times[me] = self._times.get(me, 0.0) + seconds

    @property
    def elapsed(self) -> float:
        return max(self._times.values(), default=0.0)


class Killed(BaseException):
    """The process dying: not an error any code may catch and carry on from."""


class Killer:
    """Dies at the ``at``-th mutating IoT call: before it is sent, or after AWS did it but
    before its answer arrives; from then on every call of every thread dies too."""

    def __init__(self, at: int, when: str) -> None:
        self.at, self.when, self.count, self.dead = at, when, 0, False
        self._lock = threading.Lock()
        self._doomed = threading.local()  # the thread whose call is the at-th, in "after" mode

    def attach(self, events) -> None:
        events.register("before-call.iot.*", self._before)
        events.register("after-call.iot.*", self._after)

    def _before(self, model, **_) -> None:
        with self._lock:
            if self.dead:
                raise Killed()
            if model.name.startswith(MUTATING_IOT):
                self.count += 1
                if self.count == self.at and self.when == "before":
                    self.dead = True
                    raise Killed()
                self._doomed.call = self.count == self.at

    def _after(self, model, **_) -> None:
        with self._lock:
            if self.dead:
                raise Killed()  # the answer of a call in flight is lost too
            if getattr(self._doomed, "call", False):
                self._doomed.call = False
                self.dead = True
                raise Killed()
