"""``python -m semiseg``: the console script, for environments where ``semiseg`` is not on PATH."""

import sys

from semiseg.cli import main

sys.exit(main())
