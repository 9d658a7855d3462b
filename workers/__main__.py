import sys

from portier.workers.main import main

sys.exit(main())
