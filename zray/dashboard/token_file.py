"""The dashboard token's file: made (0600) and read (refused when open to
other users). Light on imports: a driver's ``zray.init()`` uses it."""
from __future__ import annotations

import base64
import os

TOKEN_FILE_NAME = "dashboard.token"
ENV_TOKEN = "ZRAY_DASHBOARD_TOKEN"


class TokenError(ValueError):
    """A token file that cannot be used (the message says why and what to do)."""


def new_token() -> str:
    """256 random bits, URL-safe."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def write_token_file(path: str, token: str | None = None) -> str:
    """Write a fresh (or the given) token to ``path``, mode 0600; returns it."""
    token = token or new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return token


def read_token_file(path: str) -> str:
    """The token in ``path``; TokenError when it is missing, empty, or open
    to other users."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise TokenError(f"cannot read the dashboard token file {path}: "
                         f"{err.strerror or err}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_mode & 0o077:
            raise TokenError(f"the dashboard token file {path} is readable by other users "
                             f"(mode {st.st_mode & 0o777:o}); run chmod 600 {path}")
        if st.st_uid not in (os.getuid(), 0):
            raise TokenError(f"the dashboard token file {path} belongs to uid {st.st_uid}, "
                             f"not to you")
        token = f.read(4096).strip()
    if len(token) < 16:
        raise TokenError(f"the dashboard token in {path} is empty or shorter than 16 "
                         f"characters; put a long random secret there")
    return token
