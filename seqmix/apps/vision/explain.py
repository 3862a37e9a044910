"""Pictures of what a trained vision model does: :func:`draw_routing` draws bi-level routing
attention's routing (``seqmix vision predict --explain``, :mod:`seqmix.apps.vision.commands`): the
region grid of one BiFormer block over the image, the query region in red and the ``topk`` regions it
routes to in green."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from seqmix.apps.files import pyplot, save_figure


def draw_routing(image: np.ndarray, index: Tensor, grid: tuple[int, int], n_win: int, query: int, out: Path,
                 title: str) -> None:
    """Save ``image [C, S, S]`` with the region grid, the query region and its routed regions."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    side = image.shape[-1]
    cell_h, cell_w = side / n_win, side / n_win  # a region's size in image pixels (grid divided by n_win)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray")  # [C, H, W] -> [H, W(, C)]
    for r in range(n_win * n_win):
        row, col = divmod(r, n_win)
        colour = "red" if r == query else ("lime" if r in index.tolist() else None)
        ax.add_patch(Rectangle((col * cell_w - 0.5, row * cell_h - 0.5), cell_w, cell_h, fill=colour is not None,
                               alpha=0.35 if colour else 1.0, facecolor=colour or "none", edgecolor="white",
                               linewidth=0.3))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    save_figure(fig, out)
