import sys

from portier.supervisor.main import main

sys.exit(main())
