"""The ``fedward`` command line: one Typer app, one module per command group.

Each group lives in ``fedward/commands/<group>.py`` and exposes ``app`` (a
``typer.Typer``) or ``command`` (a function); this file only mounts them, so
importing the CLI stays cheap and groups can be owned separately.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="fedward",
    help="Privacy-hardened semi-asynchronous federated learning for healthcare sensor fleets.",
    no_args_is_help=True,
    add_completion=False,
)

# (module, name, kind): "group" mounts module.app as a sub-command group,
# "command" registers module.command as a top-level command.
_MOUNTS: list[tuple[str, str, str]] = [
    ("fedward.commands.simulate", "simulate", "command"),
    ("fedward.commands.bench", "bench", "command"),
    ("fedward.commands.up", "up", "command"),
    ("fedward.commands.coordinator", "coordinator", "group"),
    ("fedward.commands.edge", "edge", "group"),
    ("fedward.commands.pki", "pki", "group"),
    ("fedward.commands.audit", "audit", "group"),
    ("fedward.commands.budget", "budget", "group"),
    ("fedward.commands.tokens", "tokens", "group"),
    ("fedward.commands.report", "report", "command"),
    ("fedward.commands.study", "study", "group"),
]

for module_name, name, kind in _MOUNTS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        continue  # group not built yet
    if kind == "group":
        app.add_typer(module.app, name=name)
    else:
        app.command(name=name)(module.command)


def main() -> None:
    app()
