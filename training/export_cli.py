"""Sub-commands (filled in by issue #3)."""


def register(subparsers) -> None:
    """Add the sub-commands to `whaleid`."""
