"""``python -m agent.notify --config F --listen HOST:PORT``: the notifier as its own process."""

from __future__ import annotations

import sys

from agent.notify.app import main

sys.exit(main())
