import sys

from iterdpo.cli import main

sys.exit(main())
