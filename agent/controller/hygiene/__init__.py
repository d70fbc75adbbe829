"""Hygiene: the engine (plan, caps, mark, sweep, audit) and its jobs."""
