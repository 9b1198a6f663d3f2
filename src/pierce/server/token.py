"""The server's generated token: made on first start when none is configured, then reused.

It is kept in the file ``token`` of the server's state directory (``0600``). The first start prints it
once on stderr with how a client uses it; later starts only say where it is.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pierce.errors import InvalidValue, LocalError
from pierce.logs import event
from pierce.statedir import ensure_secret
from pierce.token_strength import check_token_strength

#: The file's name inside the server's state directory.
FILE_NAME = "token"

log = logging.getLogger("pierce.server")


def generated_token(state_dir: Path, *, allow_weak: bool) -> str:
    """The token in `state_dir`, generated (and printed once) when there is none yet."""
    path = state_dir / FILE_NAME
    token, generated = ensure_secret(path)
    try:
        check_token_strength("token", token, allow_weak)
    except InvalidValue as exc:  # someone edited the file
        raise LocalError(f"{path}: {exc.message}") from None
    if generated:
        print(
            "pierce server: no token is configured, so this one was generated and saved to\n"
            f"{path} (readable by you only). It is shown only now:\n\n"
            f"    {token}\n\n"
            "Clients log in with it; in client.toml:\n\n"
            f'    token = "{token}"\n\n'
            "or with --token-file FILE or the PIERCE_TOKEN environment variable.\n",
            file=sys.stderr,
            flush=True,
        )
    event(
        log,
        logging.INFO,
        "server.token",
        f"no token configured: {'generated' if generated else 'using'} the token in {path}",
        path=str(path),
        generated=generated,
    )
    return token
