"""Where the config file is validated: YAML -> a frozen, typed Config.

`model` holds the types, `load` reads and converts a file (and holds the YAML reader the
web config uses too), `check` looks outside the file (variables, secret and certificate
files) and lists every problem of a file.
"""
