"""The chargeplay release, recorded in every trace's manifest and shown by reports and errors
(pyproject.toml's [project] version gives the same for the installed package)."""

__version__ = "0.1.0"
