"""Sub-commands of this stage (filled in by its issue)."""


def register(subparsers) -> None:
    """Add this stage's sub-commands to `whaleid`."""
