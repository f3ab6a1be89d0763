"""Capture: pgoutput stream → decoded messages → row changes → Avro envelopes → Kafka."""
