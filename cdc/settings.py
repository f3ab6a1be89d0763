"""What a capture run is given and what it reports, in either mode (slot or outbox relay)."""

from __future__ import annotations

from dataclasses import dataclass

from bookaudit.config import Config

PROGRESS_INTERVAL_S = 5.0


@dataclass(frozen=True)
class CaptureSettings:
    source_dsn: str
    kafka_bootstrap: str
    slot: str
    publication: str
    topic_prefix: str
    source_name: str
    exit_when_idle: bool = False
    partitions: int = 3
    # Replace a lost slot and record the gap, instead of stopping (logical mode only).
    accept_gap: bool = False


def settings_from(
    cfg: Config, *, exit_when_idle: bool, accept_gap: bool = False
) -> CaptureSettings:
    """The capture's (and the relay's) settings from the one Config."""
    return CaptureSettings(
        source_dsn=cfg.need("source_dsn"),
        kafka_bootstrap=cfg.need("kafka_bootstrap"),
        slot=cfg.slot,
        publication=cfg.publication,
        topic_prefix=cfg.topic_prefix,
        source_name=cfg.source_name,
        exit_when_idle=exit_when_idle,
        accept_gap=accept_gap,
    )


@dataclass
class CaptureStats:
    changes: int = 0
    transactions: int = 0
    confirmed_lsn: int = 0
    baseline: int = 0  # snapshot events of existing rows sent in this run
