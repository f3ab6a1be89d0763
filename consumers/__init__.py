"""Consumers: Kafka envelopes → audit entries in the warehouse, and alerts."""
