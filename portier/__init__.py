"""Portier: a multi-network IPv6 Neighbor Discovery proxy (RFC 4389)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("portier")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
