"""``python -m invjax.cli``: the `invjax` command."""

import sys

from invjax.cli import main

sys.exit(main())
