"""Two processes (one per core of the development VMs) create, open and unlink a file in DIR
as fast as they can for SECONDS: every iteration allocates and frees a name, a dentry, an inode
and a file, about a million charged allocations and frees a second to record. The storm of
benchmarks/capture_storm.py and of the collector's live storm test.

    python3 benchmarks/open_unlink_storm.py DIR SECONDS
"""
import os
import sys
import time


def storm(path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(1000):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(path)


def main() -> None:
    directory, seconds = sys.argv[1], float(sys.argv[2])
    if os.fork() == 0:
        storm(os.path.join(directory, "child"), seconds)
        os._exit(0)
    storm(os.path.join(directory, "parent"), seconds)
    os.wait()


if __name__ == "__main__":
    main()
