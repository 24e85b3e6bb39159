"""`python -m backprop ...`, the same as the `backprop` command."""

import sys

from backprop.cli import main

sys.exit(main())
