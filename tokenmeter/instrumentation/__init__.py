"""The app side of tokenmeter: what runs inside the host application's process.

Light dependencies only: this package is installed into Chatchat's environment.
"""
