"""The client library: one non-blocking core (_conn), a blocking face and an asyncio face."""
