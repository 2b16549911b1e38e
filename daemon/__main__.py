from daemon.cli import app

app()
