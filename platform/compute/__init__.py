"""The GPU backend: workers and nodes, heartbeats, placement and queues (grows with fine-tuning)."""
