"""`python -m cli ...`: the same as the `finetune-phi` script."""

import sys

from cli.main import main

sys.exit(main())
