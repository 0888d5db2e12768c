"""Each process entry point imports on its own (an import cycle there kills
every worker of a node at start-up)."""
import subprocess
import sys

import pytest

ENTRY_POINTS = ["zray", "zray.worker.zygote", "zray.worker.executor", "zray.gcs.server",
                "zray.raylet.server", "zray.api", "zray.actor", "zray.util",
                "zray.util.queue", "zray.util.placement_group", "zray.cluster_utils",
                "zray._private.cli", "zray._private.microbenchmark"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_module_imports_in_a_fresh_interpreter(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
