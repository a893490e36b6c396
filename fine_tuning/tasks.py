from tenancy.scoped_tasks import organization_task


@organization_task(ignore_result=True, acks_late=True)
def validate_file_task(organization_id: int, file_id: str) -> None:
    from fine_tuning import services

    services.validate_file(file_id)
