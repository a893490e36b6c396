from celery import shared_task


@shared_task(ignore_result=True)
def drain_outbox() -> None:
    from billing import services

    services.drain_outbox()


@shared_task(ignore_result=True)
def release_expired_reservations() -> None:
    from billing import budgets

    budgets.release_expired()
