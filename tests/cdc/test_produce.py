"""The ack ledger confirms an LSN only when every event up to it has been acknowledged."""

from __future__ import annotations

from bookaudit.cdc.produce import AckLedger


def test_confirms_only_complete_prefix_of_transactions() -> None:
    ledger = AckLedger()
    t1 = [ledger.track() for _ in range(2)]
    ledger.close(100)
    t2 = [ledger.track() for _ in range(3)]
    ledger.close(200)

    for cb in t2:
        cb(None, None)
    assert ledger.advance() == 0  # t2 is done but t1 is not: nothing may move
    t1[0](None, None)
    assert ledger.advance() == 0
    t1[1](None, None)
    assert ledger.advance() == 200
    assert ledger.drained


def test_failed_delivery_never_counts_as_acknowledged() -> None:
    ledger = AckLedger()
    cb = ledger.track()
    ledger.close(50)
    cb("broker down", None)
    assert ledger.advance() == 0
    assert ledger.error == "broker down"
    assert not ledger.drained


def test_empty_transaction_confirms_at_once_and_open_one_blocks_drained() -> None:
    ledger = AckLedger()
    ledger.close(10)
    assert ledger.advance() == 10
    cb = ledger.track()
    assert not ledger.drained
    cb(None, None)
    assert not ledger.drained  # its COMMIT has not arrived yet
    ledger.close(20)
    assert ledger.advance() == 20 and ledger.drained
