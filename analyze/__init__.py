"""Compare the policies of a replay: divergence metrics, charts, one self-contained report."""
