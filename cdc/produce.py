"""The capture's side of producing: which position every event up to has been acknowledged."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Txn:
    pending: int = 0
    end_lsn: int | None = None


@dataclass
class AckLedger:
    """Which LSN may be confirmed: the end of the longest prefix of committed transactions whose
    every event Kafka acknowledged. Pure bookkeeping, fed by delivery reports."""

    confirmed_lsn: int = 0
    error: str | None = None
    failure: Any = None  # the first failed delivery's KafkaError, classified by the caller
    _current: _Txn | None = None
    _closed: deque[_Txn] = field(default_factory=deque)
    in_flight: int = 0

    def track(self) -> Callable[[Any, Any], None]:
        """Register one produced event of the open transaction; returns its delivery callback."""
        if self._current is None:
            self._current = _Txn()
        txn = self._current
        txn.pending += 1
        self.in_flight += 1

        def on_delivery(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is not None:
                # Never count a failed event as delivered: the slot must not move past it.
                self.error = self.error or str(err)
                self.failure = self.failure if self.failure is not None else err
                return
            txn.pending -= 1

        return on_delivery

    def close(self, end_lsn: int) -> None:
        txn = self._current or _Txn()
        self._current = None
        txn.end_lsn = end_lsn
        self._closed.append(txn)

    def advance(self) -> int:
        while self._closed and self._closed[0].pending == 0:
            end = self._closed.popleft().end_lsn
            assert end is not None
            self.confirmed_lsn = max(self.confirmed_lsn, end)
        return self.confirmed_lsn

    @property
    def drained(self) -> bool:
        return self._current is None and not self._closed and self.in_flight == 0
