"""``python -m fbnet_fast`` (and ``torchrun -m fbnet_fast``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
