"""Prometheus exporter for Microsoft Intune Cloud PKI."""

__version__ = "0.1.0"
