"""`python -m bench`: every benchmark in one run (bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
