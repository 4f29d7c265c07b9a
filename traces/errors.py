"""The one exception type for input chargeplay refuses on purpose.

Every place that judges what a user gave (a trace, a result, a size, a policy file, an
output path, the host a capture runs on) raises a UserError whose message names the
problem and what to do. The command line prints that message as one line and exits 2;
any other exception is a bug in chargeplay and surfaces as one, with its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Refused input or request; the message is one line that says what to do."""
