"""Allow `python3 -m dreadpi`, which works from a checkout with nothing installed."""

import sys

from dreadpi.cli import main

sys.exit(main())
