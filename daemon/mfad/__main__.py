import sys

from mfad.main import main

sys.exit(main())
