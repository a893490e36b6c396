"""The model catalog: hosted base models (and, later, fine-tuned models), their sources and the
Django-free loader that the runtime and the trainer use."""
