"""The interleaving checker: explores driver threads with the hardware's freedom to fill and evict caches, and explains violations."""
