"""Run the command line with `python -m ekiden_trace`."""

import sys

from ekiden_trace.cli import main

sys.exit(main())
