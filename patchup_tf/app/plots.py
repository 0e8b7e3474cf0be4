"""Training curves as PNG (matplotlib, headless)."""

import os


def plot_curves(history, out_dir):
    """Writes `loss.png` and `accuracy.png` from the per-epoch log rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from patchup_tf.app.folder import ACCURACY_PLOT, LOSS_PLOT
    from patchup_tf.files import atomic_write

    epochs = [r["epoch"] for r in history]
    panels = {
        LOSS_PLOT: ("loss", [("train_loss", "train objective (mixed targets)"),
                             ("valid_loss", "valid CE"), ("test_loss", "test CE")]),
        ACCURACY_PLOT: ("top-1 accuracy (%)", [("train_accuracy", "train"),
                                                 ("valid_top1", "valid"), ("test_top1", "test")]),
    }
    for filename, (ylabel, series) in panels.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in series:
            ax.plot(epochs, [r[key] for r in history], marker="o" if len(epochs) < 30 else None,
                    label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(os.path.join(out_dir, filename),
                     lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")
        plt.close(fig)
