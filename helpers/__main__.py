"""``python -m helpers ...``: see :mod:`helpers.harness.cli`."""
import sys

from helpers.harness.cli import main

sys.exit(main())
