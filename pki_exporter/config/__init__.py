"""Where the config file is validated: YAML -> a frozen, typed Config.

`model` holds the types and every rule of their keys (constraints, readers, rules across
fields), `load` walks a file's YAML along them in one pass (`yamlfile`, the exporter's one
YAML reader, refuses repeated keys; the web config uses it too), `check` looks outside the
file (variables, secret, certificate and proxy-credential files, the example's
placeholders) and lists every problem of a file.
"""
