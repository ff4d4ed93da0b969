"""The Kafka adapter: client configurations from Settings and topic management."""
