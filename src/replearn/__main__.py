import sys

from replearn.cli.main import main

sys.exit(main())
