"""The client's local admin API (status, reload, stop) and the CLI side that calls it."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from pierce.config import ClientConfig
from pierce.errors import ConfigError


def call_admin(config: ClientConfig, action: str) -> int:
    """``pierce client reload|status|stop``: ask the running client through its admin API."""
    if not config.admin_port:
        raise ConfigError(
            ["admin_port: the admin API is off; set admin_port in client.toml to use " + action]
        )
    method = "GET" if action == "status" else "POST"
    url = f"http://{config.admin_addr}:{config.admin_port}/api/{action}"
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read().decode()
    except urllib.error.HTTPError as exc:
        print(f"error: {action}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the client's admin API at {url}: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(json.loads(body), indent=2))
    except ValueError:
        print(body)
    return 0
