"""The round loop and what it leaves: screening replies, checkpoints and exact resume, the server's
own evaluation, the run folder (round table, result.json, plots). The ServerApp that composes
them is anther/server_app.py."""
