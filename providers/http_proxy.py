"""Which HTTP proxy a request goes through, from the environment, as curl and Go read it.

``https_proxy`` / ``HTTPS_PROXY`` for ``https://`` URLs and ``http_proxy``
/ ``HTTP_PROXY`` for ``http://`` ones, the lower-case name first; the
upper-case ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD`` is set, since
a CGI environment lets a client set it ("httpoxy"). A proxy without a
scheme is ``http://``; ``https://`` proxies work too; others (SOCKS) are
refused in one line rather than silently bypassed.

``no_proxy`` / ``NO_PROXY`` is a comma-separated list: ``*`` (no proxy at
all), a host name (it and every name under it: ``example.com`` and
``.example.com`` both cover ``r.example.com``), an IP address or a CIDR
block, each with an optional ``:port``. Loopback hosts are never proxied,
as in Go's net/http: a registry on this machine is never sent away.

requests' own reading of the environment is off in our sessions (it also
picks up ``.netrc`` and CA bundles from the environment); this module is
what is read instead. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from providers.errors import UsageError
from providers.registry_auth import is_loopback

_SCHEMES = ("http", "https")


def proxy_for(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The proxy URL to send ``url`` through, or None to connect directly."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not parts.hostname:
        return None
    proxy = _setting(environ, f"{scheme}_proxy")
    if not proxy:
        return None
    port = parts.port or (443 if scheme == "https" else 80)
    if is_loopback(parts.hostname) or _bypassed(parts.hostname, port, environ):
        return None
    return _checked(proxy, f"{scheme}_proxy")


def _setting(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if value:
        return value
    if name == "http_proxy" and "REQUEST_METHOD" in environ:
        return ""  # httpoxy: in CGI, HTTP_PROXY comes from a request's Proxy header
    return environ.get(name.upper(), "").strip()


def _checked(proxy: str, name: str) -> str:
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urlsplit(proxy)
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        shown = f"{parts.scheme}://" if parts.scheme else proxy
        raise UsageError(f"{name}: only http:// and https:// proxies are supported, not {shown}")
    return proxy


def _bypassed(host: str, port: int, environ: Mapping[str, str]) -> bool:
    listed = environ.get("no_proxy", "").strip() or environ.get("NO_PROXY", "").strip()
    host = host.lower().rstrip(".")
    for entry in (item.strip().lower() for item in listed.split(",")):
        if entry == "*":
            return True
        if entry and _covers(entry, host, port):
            return True
    return False


def _covers(entry: str, host: str, port: int) -> bool:
    name, wanted_port = _split_port(entry)
    if wanted_port is not None and wanted_port != port:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(name, strict=False)
        except ValueError:
            return False
    name = name.lstrip("*").lstrip(".").rstrip(".")
    return bool(name) and (host == name or host.endswith("." + name))


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``v6``, ``cidr``: the name and the port if one is given."""
    if entry.startswith("["):
        end = entry.find("]")
        rest = entry[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
        return entry[1:end], int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, port = entry.split(":")
        return name, int(port) if port.isdigit() else None
    return entry, None
