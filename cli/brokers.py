"""Trial commands: fte-broker (the embedded MQTT broker) and fte-demo (a broker, two agents, transfers)."""

from __future__ import annotations

import typer

from .app import command, out, run


@command("broker")
def broker_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(1883, "--port", help="Port to listen on."),
) -> None:
    """Run the embedded MQTT broker (amqtt) in the foreground, for trials and tests."""
    from agent.embedded_broker import run_broker_forever

    raise typer.Exit(run_broker_forever(host, port))


@command("demo")
def demo(
    size_mib: int = typer.Option(64, "--size", help="Size of the generated file in MiB."),
    keep: bool = typer.Option(False, "--keep", help="Keep the demo directory."),
    recovery: bool = typer.Option(True, "--recovery/--no-recovery", help="Also demonstrate recovery."),
) -> None:
    """Start an embedded broker and two agents, and transfer a generated file between them."""
    from .demo import run_demo

    raise typer.Exit(run(run_demo(size_mib, keep, recovery, out)))
