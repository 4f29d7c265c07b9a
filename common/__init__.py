"""Helpers every stage needs (numba's cache, byte sizes, the release): the ground floor, which
imports no other chargeplay package, so that no stage has to climb to the command line for them."""
