"""The ``securefl`` command line: thin typer commands over the library."""
