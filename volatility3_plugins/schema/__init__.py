"""What ``windows.callbackobjects`` prints and what its outputs mean, for the plugin and the fleet
commands alike.

- ``flags``: the flag names and their severity order;
- ``columns``: the columns, in order, each with the kind of its values;
- ``verdict_line``: the verdict line's fields, its writer and its parser;
- ``outputs``: the plugin's JSON outputs and the sidecars a sweep writes beside them;
- ``baseline``: registration keys and the known-good comparison.

Standard library only, and nothing here imports the rest of the project: the fleet commands use
it without starting Volatility, and the plugin imports it like any other package.
"""
