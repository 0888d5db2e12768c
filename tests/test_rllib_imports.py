"""The core never imports torch: only zray.rllib's algorithm modules do."""
import subprocess
import sys

CORE = ["zray", "zray.api", "zray._private.cli", "zray.rllib", "zray.tune"]
RLLIB = ["zray.rllib.algorithms.ppo", "zray.rllib.algorithms.dqn", "zray.rllib.algorithms.appo",
         "zray.rllib.algorithms.impala", "zray.rllib.core.rl_module.torch", "zray.rllib.cli"]


def test_importing_zray_and_its_cli_does_not_import_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "zray.init, zray.remote, zray.get\n"
            + "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_rllib_algorithm_modules_import_in_a_fresh_interpreter():
    code = "".join(f"import {m}\n" for m in RLLIB)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
