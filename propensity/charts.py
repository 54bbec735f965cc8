"""Matplotlib figures as PNG bytes or an inline HTML image, for reports that must stand alone."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_bytes(figure: Any) -> bytes:
    """The figure as a PNG; the figure is closed (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def png_img(figure: Any, alt: str = "chart") -> str:
    """An <img> with the figure inline as a data URI (KFP's HTML viewer loads nothing else)."""
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png_bytes(figure)).decode()}">'
