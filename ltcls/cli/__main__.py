"""``python -m ltcls.cli [train] ...`` (the form for ``torchrun -m ltcls.cli``)."""

import sys

from ltcls.cli.train import main

sys.exit(main())
