"""``python -m bsrnn`` (and ``torchrun -m bsrnn``) run the command line."""

import sys

from .cli import main

sys.exit(main())
