"""Render `mnisttk inspect`: Markdown, and one PNG a person reads at a glance (per-layer SQNR,
accumulated vs isolated; per-node time fp32 vs int8; the flipped test images; the int8 confusion
matrix). Plotting needs matplotlib (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.inspect.profile import WIDE_COLUMNS, layer_cells

MAX_FLIPS = 50


def format_markdown(result: dict) -> str:
    err = result["error"]
    out = [f"Per layer, int8 against fp32 on {err['images']:,} test images (acc: in the int8 graph; iso: only that "
           "layer quantized):", "", "| " + " | ".join(c.replace("|", "\\|") for c in WIDE_COLUMNS) + " |", "|" + "---|" * len(WIDE_COLUMNS)]
    out += ["| " + " | ".join(layer_cells(layer, wide=True)) + " |" for layer in err["layers"]]
    out += ["", f"Logits SQNR {err['logits']['sqnr_db']:.1f} dB; top-1 agreement {err['int8_agreement']:.2%}; "
            f"int8 changed {len(result['flips'])} of {result['n_test']:,} test predictions.", ""]
    nd = result.get("not_a_digit")
    if nd:
        t, n = nd["test"], nd["non_digits"]
        from toolkit.ood import rule_words

        rule, _, others = rule_words(result.get("classes"))
        out += [f"{rule.capitalize()} decisions (the export's rule): int8 as fp32 on {t['agreement']:.2%} of test images "
                f"({t['n_changed']} changed) and {n['agreement']:.2%} of {n['images']} {others} "
                f"({n['n_changed']} changed).", ""]
    for precision, m in result["models"].items():
        out += [f"**{m['file']}** ({precision}): {m['total_us_per_image']:.2f} µs per image in kernels "
                f"(batch {m['batch']}, {m['threads']} thread(s), median of {m['repeats']} runs)", "",
                "| node | op | µs/img | share |", "|---|---|---|---|"]
        out += [f"| {n['node']} | {n['op']} | {n['us_per_image']:.3f} | {n['share']:.1%} |" for n in m["nodes"]]
        out.append("")
    return "\n".join(out)


def write_plot(result: dict, images_u8: np.ndarray, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolkitError("--plot needs matplotlib (pip install 'mnisttk[plot]')") from None
    from toolkit.fsutil import atomic_path
    from toolkit.safetext import plot_text

    with matplotlib.rc_context(plot_text()):  # node names from the supplier's file are text, never mathtext
        flips = result["flips"][:MAX_FLIPS]
        cols = 10
        flip_rows = max(1, -(-len(flips) // cols))
        fig = plt.figure(figsize=(16, 5.2 + 1.5 * flip_rows))
        grid = fig.add_gridspec(2 + flip_rows, 3 * cols, height_ratios=[4, 0.35] + [1.3] * flip_rows, hspace=0.5,
                                left=0.05, right=0.98, top=0.94, bottom=0.03)

        layers = result["error"]["layers"]
        ax = fig.add_subplot(grid[0, 0:cols])
        names = [layer["layer"] for layer in layers]
        x = np.arange(len(names))
        acc = [min(layer["accumulated"]["sqnr_db"], 80) if layer["quantized"] else 0 for layer in layers]
        iso = [min(layer["isolated"]["sqnr_db"], 80) if layer.get("isolated") else 0 for layer in layers]
        ax.bar(x - 0.2, acc, 0.4, label="accumulated (int8 graph)")
        ax.bar(x + 0.2, iso, 0.4, label="isolated (only this layer int8)")
        for i, layer in enumerate(layers):
            if not layer["quantized"]:
                ax.text(i, 2, "kept fp32", ha="center", fontsize=8)
        ax.set_xticks(x, names)
        ax.set_ylabel("output SQNR (dB, higher is better; capped at 80)")
        ax.set_title("per-layer error")
        ax.set_ylim(0, max(acc + iso + [1]) * 1.3)
        ax.legend(fontsize=8, loc="upper left")

        ax = fig.add_subplot(grid[0, cols:2 * cols])
        fp32, int8 = result["models"]["fp32"], result["models"]["int8"]
        def label(precision: str, n: dict) -> str:  # the model's layer name where the node is one of its kernels
            return f"{precision} {n.get('layer') or n['node']}: {n['op']}"

        # light bar colours: the black labels drawn over them stay readable
        entries = [(label("fp32", n), n["us_per_image"], "#9ecae1") for n in fp32["nodes"][:7]]
        entries += [(label("int8", n), n["us_per_image"], "#fdae6b") for n in int8["nodes"][:7]]
        y = np.arange(len(entries))
        ax.barh(y, [e[1] for e in entries], color=[e[2] for e in entries])
        for i, (text, _, _) in enumerate(entries):
            ax.text(0, i, " " + text[:46], va="center", fontsize=8, color="black")
        ax.invert_yaxis()
        ax.set_yticks([])
        ax.set_xlabel(f"µs per image (batch {fp32['batch']}, {fp32['threads']} thread)")
        ax.set_title(f"per-node time: fp32 {fp32['total_us_per_image']:.1f} µs/img (blue), "
                     f"int8 {int8['total_us_per_image']:.1f} (orange)", fontsize=10)

        ax = fig.add_subplot(grid[0, 2 * cols:])
        conf = np.asarray(result.get("confusion_int8") or np.zeros((10, 10)))
        c_n = len(conf)
        shade = np.log1p(conf)
        ax.imshow(shade, cmap="Blues")
        size = 9 if c_n <= 10 else max(4, 90 // c_n)  # numbers that read at this size, smaller for many classes
        for i in range(c_n):
            for j in range(c_n):
                if conf[i, j]:  # white on the dark cells, black on the light ones
                    ax.text(j, i, str(int(conf[i, j])), ha="center", va="center", fontsize=size,
                            color="white" if shade[i, j] > 0.6 * shade.max() else "black")
        ax.set_xticks(range(c_n))
        ax.set_yticks(range(c_n))
        ax.set_xlabel("int8 prediction")
        ax.set_ylabel("true label")
        ax.set_title("int8 confusion matrix (test set)")

        title_ax = fig.add_subplot(grid[1, :])
        title_ax.set_axis_off()
        title_ax.text(0, 0, f"test images whose top-1 int8 changed ({len(result['flips'])}"
                 f"{', first ' + str(MAX_FLIPS) if len(result['flips']) > MAX_FLIPS else ''}): true / fp32 (p) / int8 (p)",
                 fontsize=10, transform=title_ax.transAxes)
        for k, f in enumerate(flips):
            ax = fig.add_subplot(grid[2 + k // cols, 3 * (k % cols):3 * (k % cols) + 3])
            ax.imshow(images_u8[f["index"]], cmap="gray")
            ax.set_axis_off()
            true = "?" if f["label"] is None else f["label"]
            ax.set_title(f"#{f['index']} true {true}\nfp32 {f['fp32']} ({f['fp32_p']:.2f})\nint8 {f['int8']} ({f['int8_p']:.2f})",
                         fontsize=7)
        if not flips:
            fig.text(0.4, 0.1, "int8 changed no prediction", fontsize=12)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
