"""The training run's curves image: loss and validation metrics per epoch.

Rendered from ``history.json`` (what ``ml_code.training.train`` writes) on the orchestrator side, so a
reviewer sees every run's curves beside its hyperparameters and can compare runs side by side;
the training container needs no plotting library.
"""

from __future__ import annotations

import io


def curves_png(history: list[dict]) -> bytes | None:
    """Loss and validation curves per epoch, for the run's record in the UI."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch") for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 2.6), dpi=80)
    for key in ("train_loss", "val_loss"):
        if any(key in h for h in history):
            ax1.plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    for key in ("val_balanced_accuracy", "val_macro_auc", "val_accuracy"):
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
