"""Interactive charts of a sweep for the HTML report (plotly, the `charts` extra): hover shows
a trial's parameters and its MLflow run, a click opens that run; a parallel-coordinates view
of every trial, like W&B Sweeps'. The first chart of a page inlines plotly.js, so a page opens
offline as before; the static PNGs stay for report.md. Without plotly: no charts (None).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd

import studylib.report.links as links  # by name: the package's __init__ imports this module
from studylib.config import SEARCHABLE

# On a click, open the trial's MLflow run (its URL rides in customdata[0]).
CLICK = (
    "var d=document.getElementById('{plot_id}');d.on('plotly_click',function(e){"
    "var u=e.points[0].customdata;if(u&&u[0]){window.open(u[0],'_blank');}});"
)


def available() -> bool:
    return importlib.util.find_spec("plotly") is not None


class Page:
    """Hands out each chart's HTML; plotly.js goes into the first one only."""

    def __init__(self) -> None:
        self.has_js = False

    def html(self, fig, div_id: str, click: bool = False) -> str:
        out = fig.to_html(
            full_html=False,
            include_plotlyjs=not self.has_js,
            div_id=div_id,
            post_script=CLICK if click else None,
            config={"displaylogo": False, "responsive": True},
        )
        self.has_js = True
        return out


def _hover(trials: pd.DataFrame, names: list[str], ui: str) -> tuple[list[list[str]], list[str]]:
    urls = [
        links.run_url(ui, str(e), r)
        for e, r in zip(trials["experiment_id"], trials["run_id"], strict=True)
    ]
    texts = []
    for _, row in trials.iterrows():
        parts = [f"<b>{row.get('tag:mlflow.runName') or 'trial ' + str(row['trial'])}</b>"]
        parts += [f"{SEARCHABLE[n]} = {row[SEARCHABLE[n]]:.3g}" for n in names]
        parts.append(f"val loss {row['selected_val_loss']:.4g}, test acc {row['test_acc']:.4f}")
        parts.append("click: open its MLflow run")
        texts.append("<br>".join(parts))
    return [[u] for u in urls], texts


def sweep_scatter(trials: pd.DataFrame, search: dict, ui: str, page: Page, div_id: str) -> str:
    """Validation loss against each swept hyperparameter, one panel each (log axes where the
    range is log-scaled; switched-off values drawn at the panel's left edge, marked 'off')."""
    from plotly.subplots import make_subplots  # optional: the charts extra

    names = [n for n in SEARCHABLE if n in search]
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True)
    custom, texts = _hover(trials, names, ui)
    colors = np.where(trials["baseline"], "#222222", "#1f77b4")
    for col, name in enumerate(names, start=1):
        x = trials[SEARCHABLE[name]].astype(float).to_numpy()
        log = bool(search[name].get("log"))
        off = (x <= 0) if log else np.zeros(len(x), dtype=bool)
        shown = np.where(off, float(search[name]["low"]) / 10, x) if log else x
        fig.add_scatter(
            x=shown,
            y=trials["selected_val_loss"],
            mode="markers",
            marker={"color": colors, "symbol": np.where(off, "x", "circle"), "size": 9},
            customdata=custom,
            hovertext=texts,
            hoverinfo="text",
            showlegend=False,
            row=1,
            col=col,
        )
        axis = {"title_text": SEARCHABLE[name] + (" (log; x at left: off)" if log else "")}
        if log:
            axis["type"] = "log"
        fig.update_xaxes(**axis, row=1, col=col)
    fig.update_yaxes(title_text="val loss of kept weights", row=1, col=1)
    fig.update_layout(height=380, margin={"l": 60, "r": 20, "t": 30, "b": 60})
    return page.html(fig, div_id, click=True)


def parallel_coordinates(trials: pd.DataFrame, search: dict, page: Page, div_id: str) -> str:
    """Every finished trial as one line across its hyperparameters and its validation loss,
    coloured by that loss; log-scaled ranges on log10 axes (switched off: one decade below)."""
    import plotly.graph_objects as go  # optional: the charts extra

    dimensions = []
    for name in (n for n in SEARCHABLE if n in search):
        values = trials[SEARCHABLE[name]].astype(float)
        spec = search[name]
        if spec.get("log"):
            floor = math.log10(float(spec["low"])) - 1
            logged = np.where(values > 0, np.log10(values.clip(lower=1e-300)), floor)
            ticks = list(range(math.floor(floor), math.ceil(math.log10(float(spec["high"]))) + 1))
            labels = ["off" if t == floor else f"1e{t}" for t in ticks]
            dimensions.append(
                {
                    "label": f"{SEARCHABLE[name]} (log10)",
                    "values": logged,
                    "tickvals": ticks,
                    "ticktext": labels,
                }
            )
        else:
            dimensions.append({"label": SEARCHABLE[name], "values": values})
    loss = trials["selected_val_loss"].astype(float)
    dimensions.append({"label": "val loss", "values": loss})
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": loss,
                "colorscale": "Viridis",
                "reversescale": True,
                "showscale": True,
                "colorbar": {"title": {"text": "val loss"}},
            },
            dimensions=dimensions,
        )
    )
    fig.update_layout(height=420, margin={"l": 80, "r": 80, "t": 60, "b": 30})
    return page.html(fig, div_id)
