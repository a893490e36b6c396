from django.apps import AppConfig


class FineTuningConfig(AppConfig):
    verbose_name = "Fine-tuning"
    name = "fine_tuning"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import worker_ready

        worker_ready.connect(_warm_trainer_on_gpu_workers, dispatch_uid="maas-warm-trainer")


def _warm_trainer_on_gpu_workers(sender, **kwargs) -> None:
    from django.conf import settings

    from fine_tuning import runner

    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender.app.amqp.queues else set()
    if settings.FINE_TUNING_QUEUE in queues:
        runner.warm_up()
