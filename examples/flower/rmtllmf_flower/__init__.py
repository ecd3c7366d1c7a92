"""rmtllmf's edge users as Flower clients: the app's two components."""
