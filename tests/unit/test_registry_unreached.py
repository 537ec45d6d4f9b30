"""Which failures to connect say that a host is not there (``registry_http._unreached``):
only those pass a mirror over at once; the rest are tried again there first.

On the exceptions requests raises, built as urllib3 2 builds them: a
connection error whose reason is urllib3's, with the connect's OSError as
that reason's cause.
"""

from __future__ import annotations

import errno
import socket

import pytest
import requests
import urllib3

from providers.registry_http import _unreached


def _failed_to_connect(cause: BaseException | None) -> requests.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "failed to connect")  # type: ignore[arg-type]
    reason.__cause__ = cause
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/v2/", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cause", "unreached"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (OSError(errno.EHOSTUNREACH, "no route to host"), True),
        (OSError(errno.ENETUNREACH, "network is unreachable"), True),
        # This machine short of descriptors or ports: nothing said of the host.
        (OSError(errno.EMFILE, "too many open files"), False),
        (OSError(errno.EADDRNOTAVAIL, "cannot assign requested address"), False),
        (None, False),
    ],
)
def test_a_connection_not_made_is_unreached_only_when_the_host_is_not_there(
    cause: BaseException | None, unreached: bool
) -> None:
    assert _unreached(_failed_to_connect(cause)) is unreached


@pytest.mark.parametrize(
    ("code", "unreached"),
    [
        (socket.EAI_NONAME, True),
        # The resolver failed for now: nothing said of the name.
        (socket.EAI_AGAIN, False),
    ],
)
def test_a_name_unreached_only_when_it_has_no_address(code: int, unreached: bool) -> None:
    reason = urllib3.exceptions.NameResolutionError("mirror.invalid", None, OSError("x"))  # type: ignore[arg-type]
    reason.__cause__ = socket.gaierror(code, "resolving")
    error = requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/v2/", reason))  # type: ignore[arg-type]
    assert _unreached(error) is unreached


def test_a_connection_that_broke_or_a_proxy_that_failed_is_not() -> None:
    reset = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
    assert not _unreached(requests.ConnectionError(reset))
    proxy = urllib3.exceptions.ProxyError("proxy down", OSError(errno.ECONNREFUSED, "refused"))
    assert not _unreached(
        requests.exceptions.ProxyError(urllib3.exceptions.MaxRetryError(None, "/v2/", proxy))  # type: ignore[arg-type]
    )
