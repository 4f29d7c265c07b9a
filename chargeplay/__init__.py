"""chargeplay: replay memcg kernel-memory charging under alternative policies."""

from common.version import __version__

__all__ = ["__version__"]
