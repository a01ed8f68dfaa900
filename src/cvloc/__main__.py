"""``python -m cvloc`` runs the command line."""

import sys

from cvloc.cli import main

sys.exit(main())
