"""Execution of cascades: `numpy` holds the reference interpreter and its operator table."""
