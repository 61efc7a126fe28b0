"""Analyses: pure functions from a cascade to facts about it (pass lower bound, symbolic cost,
live footprint, the dependency graph as DOT). Nothing here changes a cascade."""
