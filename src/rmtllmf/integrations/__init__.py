"""Adapters to other frameworks, each an optional extra (``rmtllmf[flower]``: Flower)."""
