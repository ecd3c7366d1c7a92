"""The ClientApp: the user of one task of the embedded suite (its ``partition-id``)."""

from rmtllmf.integrations.flower_app import client_app

app = client_app()
