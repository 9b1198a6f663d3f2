"""The client's HTTP request inspector: what its http proxies' visitors asked and got, and replay.

`record` holds the sans-I/O recorder (bytes of one tunnelled connection in, exchanges out) and the
bounded log of each proxy; `inspector` decides which proxies are recorded and replays a recorded request;
`api` serves both on the client's admin port (JSON under ``/api/inspect``, the page at ``/inspect``).
"""
