"""``python -m harness`` is the ``isoharness`` command."""

import sys

from harness.cli import main

sys.exit(main())
