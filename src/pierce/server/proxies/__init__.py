"""The server side of each proxy kind, one module per kind beside the kind's config and wire spec in
`pierce.proxies`; `registry` opens a proxy from its spec. The client never imports this package.

`bridge` is the one path from a visitor to a work connection; `group` load balancing; `access` the
``allow_ips`` / ``deny_ips`` checks; `rendezvous` the server's part of a P2P attempt.
"""
