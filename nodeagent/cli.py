"""``firework-agent``: the node agent's command line.

``run`` runs the agent (``--once`` for a single tick); ``plan`` prints what the
agent would do, without touching the host; ``check`` validates node config
files (hand-written ones for the Git store, or published ones) with exactly the
rules the agent applies before running them; ``check-config`` validates the
agent's own configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from nodeagent import __version__
from nodeagent.config import AgentConfig, AgentConfigError, load_agent_config
from nodeagent.spec import validate_node_config
from nodeagent.spec.problems import yaml_error

MAX_CONFIG_BYTES = 4 << 20


def check_files(paths: Sequence[Path]) -> int:
    """Validate each node config; print problems; return the number of errors."""
    errors = 0
    for path in paths:
        try:
            data = yaml.safe_load(_read(path))
        except OSError as exc:
            print(f"error: {path}: {exc.strerror}", file=sys.stderr)
            errors += 1
            continue
        except (ValueError, yaml.YAMLError) as exc:
            print(f"error: {path}: {yaml_error(exc)}", file=sys.stderr)
            errors += 1
            continue
        config, problems, warnings = validate_node_config(data, str(path))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        errors += len(problems)
        if config is not None:
            names = ", ".join(s.name for s in config.services) or "no services"
            print(f"{path}: node {config.node}: {names}")
    return errors


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise OSError(0, f"file is larger than {MAX_CONFIG_BYTES} bytes")
    return data


def load_config(path: Path) -> AgentConfig | None:
    """The agent configuration, or None after printing every problem."""
    try:
        config, warnings = load_agent_config(path)
    except AgentConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


def check_config(path: Path) -> int:
    """Validate the agent configuration; print problems or a summary."""
    config = load_config(path)
    if config is None:
        return 1
    print(
        f"{path}: node types {', '.join(config.labels)} from the {config.store_type} "
        f"store every {config.poll_interval}; state in {config.state_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``firework-agent`` argument parser."""
    parser = argparse.ArgumentParser(prog="firework-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate node config files")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check_config = commands.add_parser(
        "check-config", help="validate the agent configuration"
    )
    check_config.add_argument("--config", type=Path, required=True, metavar="FILE")
    run = commands.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True, metavar="FILE")
    run.add_argument(
        "--once", action="store_true", help="one tick, then exit (1 if it failed)"
    )
    run.add_argument(
        "--stop-vms",
        action="store_true",
        help="stop every VM on exit (by default VMs keep running)",
    )
    plan = commands.add_parser(
        "plan", help="print what the agent would do, as JSON, touching nothing"
    )
    plan.add_argument("--config", type=Path, required=True, metavar="FILE")
    plan.add_argument(
        "--node-config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="plan for these node configs instead of the store's",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``firework-agent`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return 1 if check_files(args.files) else 0
    if args.command == "check-config":
        return check_config(args.config)
    if args.command in ("run", "plan"):
        config = load_config(args.config)
        if config is None:
            return 2
        # Imported here: ``check`` must not pay for boto3 and dulwich.
        from nodeagent import commands

        if args.command == "run":
            return commands.run(config, once=args.once, stop_vms=args.stop_vms)
        try:
            return commands.plan(config, args.node_config)
        except BrokenPipeError:  # e.g. piped into head: not an error of the plan
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return 2  # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
