"""``python -m eventstore``: the same as the ``eventstore`` command."""

import sys

from eventstore.cli.main import main

sys.exit(main())
