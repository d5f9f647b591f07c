"""The Gradio UI, mounted into the API process at /ui (see `modalfuse.ui.app`)."""
