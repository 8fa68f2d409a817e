"""The exporter's own HTTP endpoints and pages."""
