"""A proxy in front of moto that holds every KMS CreateKey until the test opens its gate: a
run is then certainly inside its first create (under its lock, its state written ahead)."""

from __future__ import annotations

import threading

from tests.awsbehaviour.proxy import BehaviourProxy


class GateProxy(BehaviourProxy):
    """No AWS rules; each CreateKey waits until ``gate`` opens. ``reached`` is set at the first
    one held; ``held`` counts them."""

    def __init__(self, upstream: str, region: str) -> None:
        super().__init__(upstream, (), region=region)
        self.gate = threading.Event()
        self.reached = threading.Event()
        self.held = 0
        self._count = threading.Lock()

    def handle(self, method, path, headers, body):
        named = None if self.gate.is_set() else self.catalogue.identify(method, path, headers, body)
        if named is not None and (named[0].name, named[1]) == ("kms", "CreateKey"):
            with self._count:
                self.held += 1
            self.reached.set()
            self.gate.wait(60)
        return super().handle(method, path, headers, body)
