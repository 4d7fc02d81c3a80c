"""Writes of the rooms app, one module per concern. A room's state moves only in its
shard owner (rooms/owner.py); these services write the FIFO and hand inputs to it."""
