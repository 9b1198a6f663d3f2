"""The server's web side (``[web]`` of server.toml): a JSON API with its OpenAPI document, and ``/metrics``
for Prometheus. Everything here reads the server's typed snapshot (`pierce.snapshot.ServerSnapshot`),
never its internals, and only when asked (a request, a scrape) or on the history's timer.

- `app`: the aiohttp application, its credential check and its limits.
- `api`: the response types and how they are made from a snapshot (no I/O).
- `history`: traffic per proxy and minute over the last day, and the proxies seen that are gone.
- `openapi`: the OpenAPI document, its schemas generated from the response types.
- `metrics`: the Prometheus collector.
"""
