"""The agent SDK: emit events through Kafka and learn their outcome (sync and asyncio)."""
