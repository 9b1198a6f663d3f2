"""Proxy kinds, one module each, with the server side and the client side of that kind together."""
