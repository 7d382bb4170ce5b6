"""`litbotd <command>` (SPEC §2). Exit status: 0 success, 1 failure, 2 usage error.

Subcommands import what they need when they run, so `litbotd status` stays quick and never
loads the Lightning SDK.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Sequence

from . import config as config_mod
from . import configfile
from .backends.base import BackendError
from .config import Config, ConfigError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litbotd")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    config_help = "config file (default: $LITBOTD_CONFIG, else /etc/litbotd/litbotd.toml if present)"
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the subcommand it wins; absent there, the one before it stays.
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    p = argparse.ArgumentParser(prog="litbotd", description="GitHub App CI daemon: webhooks → Redis → jobs → checks.")
    p.add_argument("-c", "--config", metavar="PATH", help=config_help)
    p.add_argument("--version", action="version", version=f"litbotd {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon")
    dm = sub.add_parser("demo", parents=[common], help="a complete offline run: no server, no network")
    dm.add_argument("--keep", action="store_true", help="then serve the run pages until Ctrl-C")
    dm.add_argument("--port", type=int, default=0, help="the pages' port on 127.0.0.1 (default: a free one)")
    cc = sub.add_parser("check-config", parents=[common], help="validate and print the effective config")
    cc.add_argument("--online", action="store_true", help="also check Redis and the GitHub App credentials")
    lint = sub.add_parser("lint", parents=[common], help="validate workflow files and print the runs")
    lint.add_argument("dir", nargs="?", default=".", help="repository checkout (default: .)")
    lint.add_argument("--base", default="main", help="base branch for trigger matching (default: main)")
    lint.add_argument("--changed", nargs="+", metavar="FILE",
                      help="the files a change touches: say which runs paths / paths-ignore / needs would start")
    st = sub.add_parser("status", parents=[common], help="queue depths, workers, dead letters")
    st.add_argument("--json", action="store_true", help="one JSON object")
    dead = sub.add_parser("dead", parents=[common], help="the dead-letter list")
    dsub = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dsub.add_parser("list", parents=[common], help="list dead tasks with their last error")
    retry = dsub.add_parser("retry", parents=[common], help="send dead tasks back to the queue")
    g = retry.add_mutually_exclusive_group(required=True)
    g.add_argument("id", nargs="?", help="task id")
    g.add_argument("--all", action="store_true", help="every dead task")
    dsub.add_parser("purge", parents=[common], help="delete every dead task")
    rp = sub.add_parser("replay", parents=[common], help="enqueue a webhook payload as if GitHub had sent it")
    rp.add_argument("file", help="JSON payload file")
    rp.add_argument("--event", required=True, help="the X-GitHub-Event name, e.g. pull_request")
    rp.add_argument("--delivery", help="delivery id (default: a new one, so a replay is never deduplicated)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import main as demo_main
            return demo_main(keep=args.keep, port=args.port)
        if args.command == "lint":
            from .ops import lint
            return lint(args.dir, args.base, _load(args.config), changed=args.changed)
        if args.command in ("status", "dead", "replay"):
            cfg, problem = configfile.load_redis_only(args.config)
            if problem:  # these need only [redis]: say what else is wrong, and go on
                print(f"litbotd: config error (ignored: {args.command} needs only [redis]): {problem}",
                      file=sys.stderr)
        else:
            cfg = _load(args.config)
        if args.command == "run":
            from .daemon import StartError, run
            from .lifecycle import REGISTRY
            try:
                return run(cfg, REGISTRY, args.config)
            except StartError as e:
                print(f"litbotd: cannot start: {e}", file=sys.stderr)
                return 1
        if args.command == "check-config":
            return _check_config(cfg, args.online)
        from . import ops
        if args.command == "status":
            return asyncio.run(ops.status(cfg, args.json))
        if args.command == "dead":
            return asyncio.run(ops.dead(cfg, args.dead_command, getattr(args, "id", None), getattr(args, "all", False)))
        if args.command == "replay":
            return asyncio.run(ops.replay(cfg, args.file, args.event, args.delivery))
    except ConfigError as e:
        print(f"litbotd: config error: {e}", file=sys.stderr)
        return 1
    except BackendError as e:  # e.g. Lightning credentials or teamspace missing at start
        print(f"litbotd: cannot start the job backend: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    return 2  # pragma: no cover - argparse rejects unknown commands first


def _load(path: str | None) -> Config:
    return configfile.load(path)


def _check_config(cfg: Config, online: bool) -> int:
    print(f"# effective config ({cfg.source}); secrets masked")
    print(config_mod.render_toml(config_mod.to_dict(cfg)))
    from .preflight import problems, secret_store

    store, _ = secret_store(cfg)  # a problem with it is one of the refusals below
    if store.source:
        print(f"\n# job secrets ({store.source}): names only")
        print("\n".join(f"# {line}" for line in store.listing()) or "# (none)")

    if not cfg.github.app_id or not cfg.github.private_key:
        print("# warning: github.app_id / private key not set: litbotd cannot call GitHub", file=sys.stderr)
    refusals = problems(cfg)  # exactly what `litbotd run` refuses to start with
    for p in refusals:
        print(f"litbotd: `litbotd run` would refuse to start: {p}", file=sys.stderr)
    code = 1 if refusals else 0
    if online:
        from .ops import check_online
        code = max(code, asyncio.run(check_online(cfg)))
    return code

