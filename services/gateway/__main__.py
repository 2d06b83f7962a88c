"""`python -m services.gateway`: run the gateway with the settings of the environment (WHALEID_*)."""

import logging
import sys

from services.errors import WhaleIdError
from services.gateway import run_gateway
from services.settings import load_settings

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run_gateway(load_settings()))
    except WhaleIdError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        sys.exit(2)
