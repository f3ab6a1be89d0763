"""bookaudit: booking history and audit log built as a Postgres → Kafka → warehouse CDC pipeline."""

__version__ = "0.1.0"
