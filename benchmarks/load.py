"""Load benchmark: concurrent simulated Twilio calls against one server process; the naive relay as reference.

Run (from the repository root; loopback only, bounded in time — each step ~45 s):

    .venv/bin/python benchmarks/load.py --target both --steps 10,25,50,100,150,200

Same as ``voicebot loadtest`` (see ``voicebot/loadtest.py`` for the method and ``--help`` for the options);
results and the exact commands used are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicebot.loadtest import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
