import sys

from services.chain.webhooks import run_webhooks
from services.core.settings import load_settings

sys.exit(run_webhooks(load_settings()))
