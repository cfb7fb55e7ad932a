"""Optional sign-in for demos on a network, through Streamlit's built-in OIDC login.

With an ``[auth]`` section in ``.streamlit/secrets.toml`` (redirect_uri, cookie_secret, client_id,
client_secret, server_metadata_url of the identity provider) nobody sees the lab before signing
in; without one the app is open, as it should be on ``127.0.0.1``.
"""

from __future__ import annotations

import streamlit as st


def auth_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets file at all
        return False


def signed_in() -> bool:
    return bool(getattr(st.user, "is_logged_in", False))


def require_sign_in() -> None:
    """Stop the script with a sign-in screen unless login is off or the visitor has signed in."""
    if not auth_configured():
        return
    if signed_in():
        st.sidebar.button("Sign out", on_click=st.logout, icon=":material/logout:", key="auth:logout")
        return
    st.title("Lung CT robustness lab")
    st.write("This lab is shared on a network: sign in to continue.")
    st.button("Sign in", on_click=st.login, type="primary", icon=":material/login:", key="auth:login")
    st.stop()
