"""Plugin directory for ``vol -p volatility3_plugins``.

Volatility imports the modules below this folder as ``volatility3.plugins.*``; this file only
makes the folder installable as a package.
"""
