"""Actions: one module per action, each exposing ``run(ctx) -> HandlerResult``.

Handlers are generic over the Instance contract (``daemon.instances.base``) and never
know which kind they talk to.
"""
