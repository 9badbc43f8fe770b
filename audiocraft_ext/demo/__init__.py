"""`audiocraft-ext demo`: the whole method end to end on embedded data and an embedded base (see pipeline)."""
