"""``python -m logtriage``: the same command as the ``logtriage`` script."""

import sys

from logtriage.cli import main

sys.exit(main())
