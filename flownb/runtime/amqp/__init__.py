"""The RabbitMQ runtime: one worker per step, steps joined by durable queues."""
