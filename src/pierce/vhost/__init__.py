"""The web side of the server: many names on one public port.

- `pierce.vhost.front`: the shared web ports (HTTP by Host, HTTPS by SNI) and their routes.
- `pierce.vhost.router`: domain and path routing table (exact names, wildcards, locations).
- `pierce.vhost.http`: the HTTP/1.1 reverse-proxy engine, one browser connection at a time.
- `pierce.vhost.http_parse`: sans-I/O HTTP/1.1 message parsing (llhttp) for that engine.
- `pierce.vhost.paths`: the canonical request path, routed and forwarded alike.
- `pierce.vhost.limits`: caps on the web ports' connections (per source, before a first head).
- `pierce.vhost.sni`: TLS ClientHello parsing and peeking at it without consuming the socket.
- `pierce.vhost.acme`, `pierce.vhost.acme_order`: certificates from an ACME CA (HTTP-01).

The PROXY protocol headers that carry a visitor's address are in `pierce.proxy_protocol`.
"""
