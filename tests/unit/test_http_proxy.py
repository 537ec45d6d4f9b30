"""Which proxy a request takes: the environment's variables, read as curl and Go read them."""

from __future__ import annotations

import pytest

from providers.errors import UsageError
from providers.http_proxy import proxy_for

P = "http://proxy.corp:3128"


@pytest.mark.parametrize(
    ("url", "environ", "proxy"),
    [
        # The scheme's own variable; lower case first.
        ("https://r.example/v2/", {"https_proxy": P}, P),
        ("https://r.example/v2/", {"HTTPS_PROXY": P}, P),
        ("https://r.example/v2/", {"https_proxy": P, "HTTPS_PROXY": "http://other:1"}, P),
        ("https://r.example/v2/", {"http_proxy": P}, None),
        ("http://r.example/v2/", {"http_proxy": P}, P),
        ("http://r.example/v2/", {"HTTP_PROXY": P}, P),
        ("http://r.example/v2/", {"https_proxy": P}, None),
        ("http://r.example/v2/", {}, None),
        ("http://r.example/v2/", {"http_proxy": "  "}, None),
        # httpoxy: under CGI the upper-case HTTP_PROXY is a client's header.
        ("http://r.example/v2/", {"HTTP_PROXY": P, "REQUEST_METHOD": "GET"}, None),
        ("https://r.example/v2/", {"HTTPS_PROXY": P, "REQUEST_METHOD": "GET"}, P),
        # No scheme means http; an https proxy is kept as given.
        ("https://r.example/v2/", {"https_proxy": "proxy.corp:3128"}, P),
        ("https://r.example/", {"https_proxy": "https://p:8443"}, "https://p:8443"),
        ("https://r.example/", {"https_proxy": "http://u:pw@p:1"}, "http://u:pw@p:1"),
        # Loopback never leaves the machine.
        ("http://127.0.0.1:5000/v2/", {"http_proxy": P}, None),
        ("http://127.9.9.9:5000/v2/", {"http_proxy": P}, None),
        ("http://localhost:5000/v2/", {"http_proxy": P}, None),
        ("http://[::1]:5000/v2/", {"http_proxy": P}, None),
        # no_proxy: names cover themselves and what is under them, not look-alikes.
        ("https://r.example/", {"https_proxy": P, "no_proxy": "example"}, None),
        ("https://r.example/", {"https_proxy": P, "no_proxy": ".example"}, None),
        ("https://r.example/", {"https_proxy": P, "no_proxy": "*.example"}, None),
        ("https://r.example/", {"https_proxy": P, "no_proxy": "r.example"}, None),
        ("https://R.Example./", {"https_proxy": P, "NO_PROXY": "r.example"}, None),
        ("https://r.example/", {"https_proxy": P, "no_proxy": "xr.example"}, P),
        ("https://notexample/", {"https_proxy": P, "no_proxy": "example"}, P),
        ("https://r.example/", {"https_proxy": P, "no_proxy": "a.test, r.example"}, None),
        ("https://r.example/", {"https_proxy": P, "no_proxy": "*"}, None),
        ("https://r.example/", {"https_proxy": P, "no_proxy": ",,"}, P),
        # Ports: an entry with one covers only that port (443 is https's own).
        ("https://r.example/", {"https_proxy": P, "no_proxy": "r.example:443"}, None),
        ("https://r.example:5000/", {"https_proxy": P, "no_proxy": "r.example:443"}, P),
        ("https://r.example:5000/", {"https_proxy": P, "no_proxy": "r.example:5000"}, None),
        # Addresses and blocks, v4 and v6; a name is not an address.
        ("https://10.1.2.3/", {"https_proxy": P, "no_proxy": "10.0.0.0/8"}, None),
        ("https://11.1.2.3/", {"https_proxy": P, "no_proxy": "10.0.0.0/8"}, P),
        ("https://10.1.2.3:5000/", {"https_proxy": P, "no_proxy": "10.1.2.3"}, None),
        ("https://[fd00::5]/", {"https_proxy": P, "no_proxy": "fd00::/8"}, None),
        ("https://[fd00::5]:5000/", {"https_proxy": P, "no_proxy": "[fd00::5]:5000"}, None),
        ("https://[fd00::5]:5000/", {"https_proxy": P, "no_proxy": "[fd00::5]:443"}, P),
        ("https://10.1.2.3/", {"https_proxy": P, "no_proxy": "10.1.2"}, P),
        # Not HTTP: nothing to proxy.
        ("file:///srv/images/", {"http_proxy": P}, None),
    ],
)
def test_proxy_for(url: str, environ: dict[str, str], proxy: str | None) -> None:
    assert proxy_for(url, environ) == proxy


@pytest.mark.parametrize("value", ["socks5://p:1080", "socks5h://p:1080", "ftp://p:21"])
def test_a_proxy_that_is_not_http_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(UsageError) as refused:
        proxy_for("https://r.example/v2/", {"HTTPS_PROXY": value})
    scheme = value.split("://")[0]
    assert str(refused.value) == (
        f"https_proxy: only http:// and https:// proxies are supported, not {scheme}://"
    )


def test_a_refused_proxy_is_not_even_read_for_a_host_it_does_not_cover() -> None:
    # A broken setting must not stop loopback registries or no_proxy hosts.
    environ = {"https_proxy": "socks5://p:1080", "no_proxy": "r.example"}
    assert proxy_for("https://r.example/", environ) is None
    assert proxy_for("https://127.0.0.1:5000/", environ) is None
