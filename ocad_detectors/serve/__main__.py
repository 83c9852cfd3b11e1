from ocad_detectors.serve.cli import main
import sys
sys.exit(main())
