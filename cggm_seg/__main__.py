import sys

from cggm_seg.cli import main

sys.exit(main())
