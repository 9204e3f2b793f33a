"""The ``transip`` command line: one sub-command per stage of the workflow.

Each sub-command lives in the subpackage that owns it and is imported only when used,
so ``transip --help`` stays fast and the core imports none of them at import time.
Every sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.

A user's mistake (any :class:`~transip_openmm.errors.TransIPError`) is reported as one line,
``transip <command>: error: <message>``, with exit status 2 (argparse's usage errors exit 2
too); ``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from transip_openmm.errors import TransIPError

#: exit status of a user's mistake (argparse uses the same for usage errors)
USER_ERROR_STATUS = 2
#: sub-command -> (module, one-line help)
COMMANDS = {
    "train": ("transip_openmm.training.cli", "train a TransIP model from a YAML config"),
    "evaluate": ("transip_openmm.training.evaluate_cli", "evaluate a checkpoint or exported model"),
    "export": ("transip_openmm.export.cli", "export a checkpoint to a TorchScript file for OpenMM"),
    "simulate": ("transip_openmm.simulations.cli", "run an MD protocol (YAML)"),
    "analyze": ("transip_openmm.simulations.analyze_cli", "analyse a simulation run directory"),
    "demo": ("transip_openmm.simulations.demo", "short demo simulation with the shipped default model"),
    "data": ("transip_openmm.data.cli", "generate labelled training data"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="transip", description="TransIP potentials for OpenMM")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except TransIPError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"transip {args.command}: error: {message}", file=sys.stderr)
        return USER_ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())
