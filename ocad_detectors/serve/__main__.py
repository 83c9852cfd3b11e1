import sys

from ocad_detectors.serve.cli import main

sys.exit(main())
