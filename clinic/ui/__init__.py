"""The Streamlit review UI: pages over the service layer (never the database or model directly)."""
