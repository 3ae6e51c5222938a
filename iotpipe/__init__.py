"""iotpipe: provision a manufacturing IoT sensor pipeline on AWS, idempotently."""

__version__ = "0.1.0"
