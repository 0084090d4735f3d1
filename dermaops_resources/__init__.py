"""DermaOps resources: one interface per concern, a local and an AWS implementation of each,
chosen in one place (``factory.build_resources``) by ``DERMAOPS_BACKEND``."""
