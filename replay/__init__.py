"""Replay a trace under memcg charge policies and record what each policy does."""
