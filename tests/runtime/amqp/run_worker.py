"""Run ``flownb worker`` with the test components registered (used as a subprocess by the tests)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import amqp_components  # noqa: E402,F401  (registers amqptest.*)

from flownb.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
