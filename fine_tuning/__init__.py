"""Fine-tuning: files and datasets, jobs, their Celery tasks, and the Django-free trainer."""
