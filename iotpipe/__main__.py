import sys

from iotpipe.cli import main

if __name__ == "__main__":  # not when a spawned fleet worker imports it
    sys.exit(main())
