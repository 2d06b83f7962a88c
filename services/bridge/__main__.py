"""`python -m services.bridge`: run the bridge with the settings of the environment (WHALEID_*)."""

import logging
import sys

from services.bridge import run_bridge
from services.errors import WhaleIdError
from services.settings import load_settings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run_bridge(load_settings()))
    except WhaleIdError as exc:
        print(f"bridge: error: {exc}", file=sys.stderr)
        sys.exit(2)
