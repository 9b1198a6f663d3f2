"""Proxy kinds, one module each: its config, its wire spec and its client side (the work handler).

`registry` is the table of kinds the client dispatches through (and the spec codec both sides use);
`base` holds the seams a kind sees; `secret` what the secret kinds share. The server side of each kind
is the module of the same name in `pierce.server.proxies`, so that a client imports none of it.
"""
