"""``python -m moestat``: the command line."""

import sys

from moestat.cli import main

sys.exit(main())
