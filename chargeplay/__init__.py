"""chargeplay: replay memcg kernel-memory charging under alternative policies."""

import os

# Arrow's buffers, the Parquet writer's among them, from the C library's malloc, which gives freed
# memory back (mimalloc, Arrow's default, held 10-12 MiB more of a capture's RSS). Arrow picks
# its allocator as it loads, so it is told before anything imports pyarrow; the variable goes again,
# so that the workloads chargeplay runs do not inherit it. A choice of the user's stands.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    import pyarrow  # noqa: E402,F401
    del os.environ["ARROW_DEFAULT_MEMORY_POOL"]

from common.version import __version__  # noqa: E402

__all__ = ["__version__"]
