"""Model families behind a small interface: ``tiny-vit`` (embedded default)."""
