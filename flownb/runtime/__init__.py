"""Runtimes: the embedded local runtime (default) and the RabbitMQ runtime, sharing one core."""
