"""`python -m services.chain.gateway`: the same as `whaleid serve gateway` (settings from the environment, WHALEID_*)."""

import sys

from services.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", "gateway", *sys.argv[1:]]))
