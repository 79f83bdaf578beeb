import sys

from studylib.cli import main

sys.exit(main())
