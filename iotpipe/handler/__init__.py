"""The Lambda code of iotpipe.

Shipped alone (``index.py`` at the zip root), so it imports only the standard library and
boto3 — never anything else from ``iotpipe``.
"""
