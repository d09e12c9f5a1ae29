"""`python -m edge_runtime.serve DIR ...`: the same as the edge-serve command."""

import sys

from edge_runtime.cli_serve import main

sys.exit(main())
