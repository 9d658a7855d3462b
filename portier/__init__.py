"""Portier: a multi-network IPv6 Neighbor Discovery proxy (RFC 4389)."""
