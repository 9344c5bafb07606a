import sys

from featpipe.cli import main

sys.exit(main())
