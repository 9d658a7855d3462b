import sys
from pathlib import Path

# The lab (deploy/lab.py) and the test peers are plain scripts, not installed modules.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))
