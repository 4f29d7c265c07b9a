"""chargeplay: replay memcg kernel-memory charging under alternative policies."""

__version__ = "0.1.0"
