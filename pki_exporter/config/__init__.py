"""Where the config file is validated: YAML -> a frozen, typed Config."""
