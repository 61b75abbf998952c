"""`mfa metrics`: the daemon's counters, in Prometheus' text format."""

from __future__ import annotations

import click

from mfa_cli.client import DaemonClient, pass_client


@click.command(
    epilog="""\b
Examples:
  mfa metrics                                  print them
  mfa metrics > /var/lib/prometheus/node-exporter/mfad.prom.$$ &&
    mv /var/lib/prometheus/node-exporter/mfad.prom.$$ \\
       /var/lib/prometheus/node-exporter/mfad.prom
                                               for node_exporter's textfile collector
"""
)
@pass_client
def metrics(client: DaemonClient) -> None:
    """Print mfad's counters (root and the admin group only): logins by outcome,
    method and service, wrong answers, verification time, locks and host blocks
    set, store and audit errors, and when mfad started."""
    click.echo(client.request("metrics")["text"], nl=False)
