"""Lambda handlers: thin adapters (parse, call offload/, respond). See issue "Lambda handlers"."""
