"""The wire between the stages: the Avro envelope and alert serdes, and the Kafka producer."""
