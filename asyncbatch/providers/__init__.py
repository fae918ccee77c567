"""Provider adapters: one request format in, any provider's batch API out."""
