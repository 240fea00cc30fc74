"""`python -m ami_edge` is `ami-edge`."""

import sys

from .cli import main

sys.exit(main())
