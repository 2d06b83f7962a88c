import sys

from services.settings import load_settings
from services.webhooks import run_webhooks

sys.exit(run_webhooks(load_settings()))
