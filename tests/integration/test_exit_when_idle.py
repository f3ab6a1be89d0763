"""`--exit-when-idle` is exact: a consumer notes the end offsets of its topics when it starts,
waits however long the group takes to let it join, and exits once everything up to those
offsets is committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.integration.harness import Pipeline, wait_for
from tests.integration.workloads import book, booking_topic

# Longer than the ten seconds after which the consumer used to give up when it had no partitions.
STALL_S = 12.0


class StalledMember(threading.Thread):
    """A member of the same group that stops polling for a while, as a busy instance does: a
    newcomer's join cannot finish until it polls again. It reads an unrelated topic, so it
    takes none of the change topics' partitions."""

    def __init__(self, p: Pipeline, group_id: str) -> None:
        super().__init__(daemon=True)
        topic = f"{p.prefix}-stalled-member"
        admin = AdminClient({"bootstrap.servers": p.stack.kafka_bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=60)
        self.events: list[str] = []
        self.consumer = Consumer(
            {
                "bootstrap.servers": p.stack.kafka_bootstrap,
                "group.id": group_id,
                "session.timeout.ms": 10000,
            }
        )
        self.consumer.subscribe(
            [topic],
            on_assign=lambda _c, _p: self.events.append("assigned"),
            on_revoke=lambda _c, _p: self.events.append("revoked"),
        )
        self.done = threading.Event()

    def join_group(self) -> None:
        deadline = time.monotonic() + 60
        while "assigned" not in self.events and time.monotonic() < deadline:
            self.consumer.poll(0.2)
        assert "assigned" in self.events, "the stalled member never joined its group"

    def run(self) -> None:
        time.sleep(STALL_S)
        self.events.append("polls again")
        while not self.done.is_set():
            self.consumer.poll(0.2)
        self.consumer.close()


@contextmanager
def stalled_member(p: Pipeline, group_id: str) -> Iterator[StalledMember]:
    member = StalledMember(p, group_id)
    member.join_group()
    member.start()
    try:
        yield member
    finally:
        member.done.set()
        member.join(timeout=30)


def _committed_to_the_end(p: Pipeline, group_id: str) -> bool:
    probe = Consumer({"bootstrap.servers": p.stack.kafka_bootstrap, "group.id": group_id})
    try:
        topic = booking_topic(p)
        parts = [TopicPartition(topic, n) for n in range(3)]
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        committed = probe.committed(parts, timeout=10)
    finally:
        probe.close()
    return [c.offset if c.offset >= 0 else 0 for c in committed] == ends


@pytest.mark.slow
def test_exit_when_idle_waits_out_a_slow_group_join(schema_pipeline: Pipeline) -> None:
    p = schema_pipeline
    book(p, bookings=30)
    p.capture()
    with stalled_member(p, p.group_id) as member:
        stats = p.consume()
        # The join really waited: the group rebalanced only once the member polled again.
        wait_for("the stalled member to rejoin", lambda: member.events[-1] == "assigned")
        assert member.events[:3] == ["assigned", "polls again", "revoked"], member.events
    assert stats.written == 31  # the customer and its 30 bookings
    assert p.warehouse("SELECT count(*) FROM audit.row_changes") == [(31,)]
    assert _committed_to_the_end(p, p.group_id)
