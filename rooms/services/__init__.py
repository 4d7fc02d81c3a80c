"""Writes of the rooms app, one module per concern, all moving rooms through `transitions`."""
