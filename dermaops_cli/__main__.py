"""``python -m dermaops_cli`` = ``dermaops``."""

import sys

from . import main

sys.exit(main())
