import sys

from iotpipe.cli import main

sys.exit(main())
