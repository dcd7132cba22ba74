import sys

from mega.cli import main

sys.exit(main())
