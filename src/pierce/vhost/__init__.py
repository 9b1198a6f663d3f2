"""The web side of the server: many names on one public port.

- `pierce.vhost.router`: domain and path routing table (exact names, wildcards, locations).
- `pierce.vhost.sni`: TLS ClientHello parsing and peeking at it without consuming the socket.
- `pierce.vhost.proxy_protocol`: PROXY protocol v1/v2 headers that carry the visitor's address.
"""
