"""Measurement: every stage's figures. Nothing in nanosdm/ or nanosdm/corpus/ imports this package."""
