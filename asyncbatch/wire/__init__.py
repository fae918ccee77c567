"""What an OpenAI-compatible batch server puts on the wire, shared by the two servers the package ships: the
emulator (``asyncbatch.emulator``, a stand-in for the providers) and the gateway (``asyncbatch.gateway``, a real
server over the engine). Neither imports the other.

- ``openai``: the Files and Batch API objects and the error envelope, field for field;
- ``web``: aiohttp helpers (JSON answers, request keys, query parameters).
"""
