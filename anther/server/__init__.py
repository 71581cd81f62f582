"""Server side: the ServerApp, the backbone, checkpoints and server-side evaluation."""
