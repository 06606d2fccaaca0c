"""`python3 -I -S tests/lab/sim ARGV0 ARGS...`: one simulator call in this process (bin/sim does
this where no simulator server runs); `... --serve SOCKET`: the host's server (server.py)."""

import os
import sys

# tests/lab goes on the path rather than the repository root: importing the package `sim`
# alone keeps tests/__init__.py and tests/lab/__init__.py (venv-only imports) out of
# /usr/bin/python3.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim import cli  # noqa: E402

if sys.argv[1:2] == ["--serve"]:
    from sim import server
    server.serve(sys.argv[2])
sys.exit(cli.call(sys.argv[1:]))
