"""The kernel lab: boot Debian's 6.1 and 6.12 kernels under qemu (virtme-ng, TCG) over this
machine's own root file system, with cgroup v2, and run chargeplay's live tests inside.

The lab is development tooling, not part of the installed package: run it from a checkout
with `python -m lab` (see the README, "The kernel lab").
"""
