"""`python -m services.chain.bridge`: the same as `whaleid serve bridge` (settings from the environment, WHALEID_*)."""

import sys

from services.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", "bridge", *sys.argv[1:]]))
