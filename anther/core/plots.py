"""matplotlib for anther's PNG plots, loaded when a plot is drawn.

Every plot anther draws goes to a file, so pyplot runs on the Agg backend (no display needed).
It is imported on first use: it costs a process about a second, and most processes anther starts
(ClientApps, the backbone service, a SuperNode's per-message ClientApp) draw nothing.
"""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
