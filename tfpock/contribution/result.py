"""``SearchResult``: the searched scheme, the per-candidate table, and ``save(dir)``."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile

from tfpock.scheme import Scheme

TABLE_COLUMNS = ("layer", "option", "gain", "gain_std", "accuracy_gain", "activation_bytes",
                 "variable_bytes", "memory_bytes", "step_ms", "predicted", "chosen")


class SearchResult:
    """What ``tfpock.search`` returns.

    Attributes:
        scheme: the chosen :class:`tfpock.Scheme` (``optimize(model, scheme=result.scheme)``).
        table: one dict per candidate option: layer, option, gain (validation-loss decrease of
            base + option over the base, mean over seeds), gain_std, accuracy_gain, the exact
            costs of base + option (activation, variable and memory bytes, step_ms; exact, or
            ``predicted`` True: see tfpock/contribution/estimate.py), chosen.
        summary: budget, predicted vs measured gain and cost of the pick, the other schemes
            checked, what refinement bought, the noise, timings.
    """

    def __init__(self, scheme: Scheme, table: list[dict], summary: dict):
        self.scheme = scheme
        self.table = table
        self.summary = summary

    def report(self) -> str:
        """The search as Markdown: the pick, its checks, and the candidate table."""
        s, c = self.summary, self.summary["chosen"]
        lines = ["# tfpock.search", "",
                 f"Budget: {s['budget']}; base trained always: {s['base']}.", "",
                 f"Chosen: `{c['choice']}`; scheme `{self.scheme}`.", "",
                 "| figure | predicted | measured |", "| --- | --- | --- |",
                 f"| gain (val loss decrease over base) | {c['predicted_gain']:.4f} | "
                 f"{c['measured_gain']:.4f} +- {c['measured_gain_std']:.4f} |",
                 f"| training memory, bytes | {c['predicted_memory_bytes']:,.0f} | "
                 f"{c['exact_memory_bytes']:,} (exact: compiled) |",
                 f"| step, ms (ai-edge-litert, 1 thread) | {_ms(c['predicted_step_ms'])} | "
                 f"{_ms(c['measured_step_ms'])} |", "",
                 f"Base alone: val loss {s['base_val_loss']:.4f}, val accuracy "
                 f"{s['base_val_accuracy']:.3f}, {s['base_cost']['memory_bytes']:,} bytes. "
                 f"Chosen scheme's val accuracy after the probe: {c['measured_val_accuracy']:.3f}.",
                 "", "Additivity checks (gain and time predicted as sums over single options, "
                 "memory as max-plus, see tfpock/contribution/select.py):", "",
                 "| scheme | options | gain pred / meas | memory pred / exact | "
                 "step ms pred / meas |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k['scheme']} | `{k['choice']}` | {k['predicted_gain']:.4f} / "
                  f"{k['measured_gain']:.4f} | {k['predicted_memory_bytes']:,.0f} / "
                  f"{_bytes(k['exact_memory_bytes'])} | {_ms(k['predicted_step_ms'])} / "
                  f"{_ms(k['measured_step_ms'])} |" for k in s["checks"]]
        r = s["refinement"]
        lines += ["", f"Refinement (evolutionary, {r['evaluations']} probe evaluations): measured "
                  f"gain {r['knapsack_measured_gain']:.4f} -> {r['refined_measured_gain']:.4f} "
                  f"(bought {r['bought']:+.4f}).",
                  f"Cost repairs (exact memory over budget): {len(s['repairs'])}.",
                  _confirmation(s.get("confirmation")),
                  f"Noise: median spread of a gain over seeds {s['noise']['median_gain_std']:.4f}, "
                  f"gains range {s['noise']['gain_range'][0]:.4f} .. "
                  f"{s['noise']['gain_range'][1]:.4f}.",
                  f"Timing: analysis {s['timing']['analysis_s']:.1f} s (from cache: "
                  f"{s['timing']['analysis_from_cache']}), selection+verification "
                  f"{s['timing']['selection_s']:.1f} s, {s['timing']['probe_runs']} probe runs, "
                  f"{s['timing']['compiles']} compiles.", "",
                  "| " + " | ".join(TABLE_COLUMNS) + " |",
                  "|" + " --- |" * len(TABLE_COLUMNS)]
        lines += ["| " + " | ".join(_cell(row[k]) for k in TABLE_COLUMNS) + " |"
                  for row in self.table]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | os.PathLike) -> str:
        """Writes scheme.json, table.csv, table.json, summary.json, report.md and plot.png
        (when matplotlib is installed) into ``directory``, all or nothing: the files are
        written into a fresh folder beside it, which then replaces ``directory``."""
        directory = os.path.abspath(os.fspath(directory))
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tfpock-search-", dir=parent)
        try:
            self.scheme.save(os.path.join(tmp, "scheme.json"))
            with open(os.path.join(tmp, "table.json"), "w", encoding="utf-8") as f:
                json.dump(self.table, f, indent=1)
            with open(os.path.join(tmp, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(self.summary, f, indent=1)
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS + ("policy",))
            writer.writeheader()
            for row in self.table:
                writer.writerow({**{k: row[k] for k in TABLE_COLUMNS},
                                 "policy": json.dumps(row["policy"])})
            with open(os.path.join(tmp, "table.csv"), "w", encoding="utf-8") as f:
                f.write(buf.getvalue())
            with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
                f.write(self.report())
            self.plot(os.path.join(tmp, "plot.png"))
            old = None
            if os.path.exists(directory):
                old = tempfile.mkdtemp(prefix=".tfpock-search-old-", dir=parent)
                os.rename(directory, os.path.join(old, "previous"))
            os.rename(tmp, directory)
            if old:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def plot(self, path: str) -> bool:
        """Gain vs training memory of every candidate (base + one option), the Pareto front
        and the chosen scheme; False when matplotlib is missing."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        c = self.summary["chosen"]
        fig, ax = plt.subplots(figsize=(6, 4))
        mem = [r["memory_bytes"] / 1024 for r in self.table]
        gain = [r["gain"] for r in self.table]
        ax.scatter(mem, gain, s=12, color="gray", label="base + one option")
        front = pareto([(m, g) for m, g in zip(mem, gain)])
        ax.plot([p[0] for p in front], [p[1] for p in front], color="C0", label="Pareto front")
        ax.scatter([c["exact_memory_bytes"] / 1024], [c["measured_gain"]], color="C3",
                   marker="*", s=120, label="searched (measured)")
        if self.summary["budget"]["memory_bytes"]:
            ax.axvline(self.summary["budget"]["memory_bytes"] / 1024, color="C3", ls=":",
                       label="budget")
        ax.set_xlabel("training memory (KB)")
        ax.set_ylabel("validation loss decrease over base")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True


def pareto(points) -> list[tuple[float, float]]:
    """The points no other point beats on both (lower x, higher y), by increasing x."""
    front, best = [], -float("inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _bytes(v) -> str:
    return "- (not compiled)" if v is None else f"{v:,}"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _confirmation(c: dict | None) -> str:
    """The confirmation line: finalists' gains by the long probe, and whether it changed the
    short probe's pick."""
    if not c:
        return "Confirmation: none (the short probe decided)."
    rows = ", ".join(f"`{f['choice']}` {f['gain']:.4f}" for f in c["finalists"])
    return (f"Confirmation ({c['steps']}-step probe, gain over base by finalist): {rows}; "
            f"chosen `{c['choice']}`" + (f" instead of `{c['short_choice']}`."
                                        if c["changed"] else " (the short probe's pick)."))
