"""`python -m profiling.daemon`: run the profiling daemon."""

import sys

from profiling.daemon.service import main

sys.exit(main())
