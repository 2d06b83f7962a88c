"""The `whaleid` command line."""
