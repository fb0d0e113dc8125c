"""``python -m lstm_infer`` runs the ``lstm-infer`` command line."""

import sys

from .cli import main

sys.exit(main())
