from celery import shared_task


@shared_task(ignore_result=True)
def drain_outbox() -> None:
    from billing import services

    services.drain_outbox()


@shared_task(ignore_result=True)
def release_expired_reservations() -> None:
    from billing import budgets

    budgets.release_expired()


@shared_task(ignore_result=True)
def roll_up_usage() -> None:
    from billing import rollups

    rollups.roll_up()


@shared_task(ignore_result=True)
def close_invoices() -> None:
    from billing import invoicing

    invoicing.close_due()


@shared_task(ignore_result=True, autoretry_for=(Exception,), retry_backoff=60, max_retries=10)
def collect_invoice(invoice_id: int) -> None:
    from billing import paying

    paying.collect_invoice(invoice_id)


@shared_task(ignore_result=True)
def enforce_payment_grace() -> None:
    from billing import paying

    paying.enforce_grace()
