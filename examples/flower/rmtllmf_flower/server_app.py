"""The ServerApp: merges the clients' updates over the jammed uplink and defends the merge."""

from rmtllmf.integrations.flower_app import server_app

app = server_app()
