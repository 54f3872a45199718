import sys

from tokenmeter.cli.main import main

sys.exit(main())
