"""Capture kernel-memory events of a workload into a chargeplay trace."""
