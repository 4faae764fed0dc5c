"""The quality prior on a sample: the model's own-loss signals stored for it, and whether
the selection's prior left it out (and why)."""

from __future__ import annotations

import curator_ui as ui
import streamlit as st

from curator.store import scores as store_scores

HELP = ("How plausible the model finds this row's answer for its own prompt, over the "
        "answer's tokens: answer loss = mean NLL given the prompt (nats per token); IFD = "
        "that loss over the loss after an empty prompt (near or above 1: the prompt does not "
        "make the answer likelier, a sign the answer belongs elsewhere); end-of-turn NLL: "
        "how surprised the model is that the answer stops there (high for cut-off answers).")


def quality_signals(sel, sample_id: str) -> None:
    prior = (sel.config or {}).get("quality") or {}
    reason = (prior.get("dropped") or {}).get(sample_id)
    rows = ui.read(store_scores.sample_quality, sample_id)
    st.markdown("**Quality signals**", help=HELP)
    if reason:
        st.warning(f"Left out of this selection by the quality prior "
                   f"({prior.get('signal')}, drop {prior.get('drop')}): {reason}.",
                   icon=":material/filter_alt:")
    elif prior:
        st.caption(f"This selection's quality prior ({prior.get('signal')}, drop "
                   f"{prior.get('drop')}) left out {prior.get('n_dropped', 0)} of "
                   f"{prior.get('n_pool', 0)} rows; not this one.")
    if not rows:
        st.caption("none stored (`curator score quality`, or a selection with the quality "
                   "prior, computes them)")
        return

    def fmt(v, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    st.dataframe([{"model": r["model"], "answer loss": fmt(r["loss"]), "IFD": fmt(r["ifd"], 2),
                   "end-of-turn NLL": fmt(r["stop_nll"]), "answer tokens": r["n_answer"],
                   "not scored because": r["reason"]} for r in rows],
                 key="sel_sample_quality", hide_index=True)
