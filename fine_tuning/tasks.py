from celery import shared_task

from tenancy.scoped_tasks import organization_task


@organization_task(ignore_result=True, acks_late=True)
def validate_file_task(organization_id: int, file_id: str) -> None:
    from fine_tuning import services

    services.validate_file(file_id)


# Routed to the gpu queue (concurrency 1, prefetch 1). Late acks and redelivery help, but the
# job's lease is what guarantees it runs once at a time and is picked up again after a crash.
@organization_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(organization_id: int, job_id: str) -> None:
    from fine_tuning import runner

    runner.run(job_id)


@shared_task(ignore_result=True)
def reap_jobs() -> None:
    from fine_tuning import jobs

    jobs.requeue_expired()


@shared_task(ignore_result=True)
def sweep_disk() -> None:
    from fine_tuning import retention

    retention.sweep()
