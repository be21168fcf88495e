"""Entry point: `python hack/nodeagent/__main__.py --kubeconfig ... ` (see agent.parse_args).

Started as a script, not with `-m` from the repo root: the repo root holds `operator/`, which
must never come first on sys.path. So this file drops its own folder from sys.path (its modules
are not top-level modules) and appends the repo root at the end, then imports the package."""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(os.path.dirname(_here))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in (_here, _root)]
sys.path.append(_root)

from hack.nodeagent.agent import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
