"""Dora grids: `dora -P audiocraft_ext grid NAME` runs `audiocraft_ext/grids/NAME.py`."""
