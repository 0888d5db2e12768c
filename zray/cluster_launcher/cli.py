"""The cluster-launcher subcommands of ``zray``, registered by
``zray/_private/cli.py`` through :func:`add_parsers`."""
from __future__ import annotations

import argparse
import sys



class _Lazy:
    """``commands``, imported on first use (jsonschema and the rest load only
    for these subcommands, not for every ``zray`` run)."""

    def __getattr__(self, name):
        from . import commands as module
        return getattr(module, name)


commands = _Lazy()


def _run(args) -> int:
    """Load the config, run the command; errors become messages and exit codes."""
    from .bootstrap import StepError
    from .config import ConfigError, load
    from .ssh import SshError
    try:
        cfg = load(args.cluster_config)
    except ConfigError as err:
        print(f"zray {args.command}: {err}", file=sys.stderr)
        return 2
    try:
        return args.launcher(cfg, args)
    except (SshError, StepError) as err:
        print(f"zray {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"zray {args.command}: interrupted", file=sys.stderr)
        return 130


def _submit_args(args) -> list:
    rest = list(args.script_args)
    return rest[1:] if rest[:1] == ["--"] else rest


def add_parsers(sub) -> None:
    """Add up/down/exec/submit/attach/get-head-ip/rsync-up/rsync-down/monitor."""
    def command(name: str, text: str, launcher):
        parser = sub.add_parser(name, help=text, description=text)
        parser.add_argument("cluster_config", help="the cluster YAML (see configs/)")
        parser.set_defaults(func=_run, launcher=launcher)
        return parser

    up = command("up", "start or update a cluster from a YAML file, over SSH",
                 lambda cfg, a: commands.up(cfg, yes=a.yes, restart_only=a.restart_only,
                                            no_restart=a.no_restart))
    up.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    up.add_argument("--restart-only", action="store_true",
                    help="skip file mounts, setup and install; restart zray on every host")
    up.add_argument("--no-restart", action="store_true",
                    help="run file mounts, setup and install only; start nothing")

    down = command("down", "stop the cluster's nodes and remove their units (logs stay)",
                   lambda cfg, a: commands.down(cfg, yes=a.yes))
    down.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    ex = command("exec", "run a shell command on the cluster's hosts",
                 lambda cfg, a: commands.exec_(cfg, a.cmd, a.node, a.tty))
    ex.add_argument("cmd", help="the command line to run")
    ex.add_argument("--node", default="head", help="all, head (default) or a host's IP")
    ex.add_argument("--tty", action="store_true", help="give the command a terminal")

    sb = command("submit", "copy a script to the head and run it there as a driver",
                 lambda cfg, a: commands.submit(cfg, a.script, _submit_args(a)))
    sb.add_argument("script")
    sb.add_argument("script_args", nargs=argparse.REMAINDER,
                    help="arguments for the script, after --")

    command("attach", "an interactive shell on the head",
            lambda cfg, a: commands.attach(cfg))
    command("get-head-ip", "print the head's IP",
            lambda cfg, a: print(cfg.head_ip) or 0)

    for name, up_ in (("rsync-up", True), ("rsync-down", False)):
        rs = command(name, f"copy files {'to' if up_ else 'from'} the cluster's hosts",
                     lambda cfg, a, up_=up_: commands.rsync(cfg, a.source, a.target,
                                                            up=up_, node=a.node))
        rs.add_argument("source")
        rs.add_argument("target")
        rs.add_argument("--node", default="head", help="all, head (default) or a host's IP")

    mon = command("monitor", "follow the head's zray logs (Ctrl-C ends)",
                  lambda cfg, a: commands.monitor(cfg, a.lines))
    mon.add_argument("--lines", type=int, default=50, help="lines of each log to show first")
