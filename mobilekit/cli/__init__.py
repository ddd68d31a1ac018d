"""The ``mobilekit`` command line: the only place that imports typer or rich."""
