"""The ``diga`` command line (Typer): one module per verb, thin: parse, call the library, print."""
