"""`audiocraft-ext demo`: the mission end to end on embedded data and an embedded base (see pipeline)."""
