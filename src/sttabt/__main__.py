import sys

from sttabt.cli import main

sys.exit(main())
