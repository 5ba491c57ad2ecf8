"""``python -m clinic.cli`` runs the ``clinic`` command."""

from clinic.cli.main import app

app()
