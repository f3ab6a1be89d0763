"""`map check` against a catalog, without a database: a partitioned booking table is keyed by
its primary key less the partition key."""

from __future__ import annotations

from bookaudit.entity_map import TableRef, default_map
from bookaudit.source.map_check import Catalog, TableInfo, check_map

COLUMNS = ("id", "customer_id", "scheduled_start", "scheduled_end", "status", "price")


def _problems(booking: TableInfo) -> list[str]:
    """The sample map's booking table as given, every other table it names as it should be."""
    entity_map = default_map()
    tables = {
        entity.table: TableInfo(tuple(entity.columns()) + COLUMNS, (entity.key or "id",), True)
        for entity in entity_map.entities
    }
    tables[TableRef("public", "bookings")] = booking
    return [p for p in check_map(entity_map, Catalog(tables, True)) if "[map.booking]" in p]


def test_a_partitioned_table_is_keyed_by_its_primary_key_less_the_partition_key() -> None:
    partitioned = TableInfo(COLUMNS, ("id", "scheduled_start"), True, ("scheduled_start",))
    assert _problems(partitioned) == []


def test_a_composite_key_is_still_refused_where_it_is_not_the_partition_key() -> None:
    plain = TableInfo(COLUMNS, ("id", "scheduled_start"), True)
    assert _problems(plain) == [
        "[map.booking]: key 'id' is not the primary key of public.bookings "
        "(primary key: id, scheduled_start)"
    ]
    by_customer = TableInfo(COLUMNS, ("id", "customer_id"), True, ("scheduled_start",))
    assert len(_problems(by_customer)) == 1
