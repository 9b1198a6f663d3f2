"""pierce: make services behind NAT reachable."""

__version__ = "0.1.0"
