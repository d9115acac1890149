"""otviz dashboard: launch trainings, watch transport plans and curves live.

Start it with ``otviz dashboard`` (or ``streamlit run app/otviz_app.py``). The run
store is ``$OTVIZ_STORE`` if set, else ``~/.otviz/runs.db``.
"""

import streamlit as st

st.set_page_config(page_title="otviz", page_icon=":material/hub:", layout="wide",
                   initial_sidebar_state="collapsed")

PAGES = [
    st.Page("views/train.py", title="Train", icon=":material/model_training:", default=True),
    st.Page("views/alignments.py", title="Alignments", icon=":material/grid_on:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
    st.Page("views/lab.py", title="OT lab", icon=":material/science:"),
]
page = st.navigation(PAGES, position="top")

with st.sidebar:
    import otviz
    from dashkit import store_path

    st.caption(f"otviz {otviz.__version__} - representation transfer by optimal transport")
    st.caption(f"Run store: `{store_path()}`")

page.run()
