"""``python -m napari_xai.cli``."""

import sys

from .main import main

sys.exit(main())
