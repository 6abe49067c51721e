"""Run the command line with `python -m ekiden_trace`."""

import sys

from .cli import main

sys.exit(main())
