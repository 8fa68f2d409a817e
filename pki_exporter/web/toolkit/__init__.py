"""The exporter-toolkit web config: TLS, basic auth, headers."""
