"""Local emulator of the OpenAI and Anthropic batch HTTP APIs (offline development, demos and tests)."""
