"""whaleid services: the embedded stack, the identification core and the streaming chain."""
