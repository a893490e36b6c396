from celery import shared_task

from tenancy.scoped_tasks import organization_task


@organization_task(ignore_result=True, acks_late=True)
def validate_file_task(organization_id: int, file_id: str) -> None:
    from fine_tuning import services

    services.validate_file(file_id)


# On the gpu queue (concurrency 1, prefetch 1), a message only wakes a worker: it claims by the
# pool's policy (fine_tuning.jobs.claim_next), and the job's lease, not the broker, guarantees it
# runs once at a time and is picked up again after a crash.
@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def claim_jobs() -> None:
    from fine_tuning import runner

    runner.run_next()


@organization_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(organization_id: int, job_id: str) -> None:
    """Messages sent before workers pulled: a wake-up like claim_jobs."""
    from fine_tuning import runner

    runner.run_next()


@shared_task(ignore_result=True)
def reap_jobs() -> None:
    from fine_tuning import jobs, services

    jobs.requeue_expired()
    jobs.explain()
    services.resend_stuck_validations()


@shared_task(ignore_result=True)
def sweep_disk() -> None:
    from fine_tuning import retention

    retention.sweep()
