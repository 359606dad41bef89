"""`python -m ajet ...` is the `ajet` command."""

import sys

from ajet.launcher import main

sys.exit(main())
