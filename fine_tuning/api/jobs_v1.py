"""/v1/fine_tuning/jobs — OpenAI-compatible, with our extensions on the job object
(estimated_tokens, queue_position, estimated_start, wait_reason, accelerators, memory_per_accelerator,
peak_memory_bytes, preemptions, progress, attempts, effective_training_time)."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from fine_tuning import jobs, queue
from fine_tuning.models import Checkpoint, FineTuningJob, JobEvent
from tenancy.api.pagination import CursorPagination
from tenancy.api.scoping import KeyScopedMixin
from tenancy.roles import Scope


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def job_object(job: FineTuningJob, place: queue.Place | None = None) -> dict:
    return {
        "id": job.pk,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at),
        "model": job.base_model_id,
        "organization_id": job.organization.slug,
        "status": job.status,
        "training_file": job.training_file_id,
        "validation_file": job.validation_file_id,
        "hyperparameters": job.hyperparameters,
        "method": job.method,
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": _ts(job.finished_at),
        "estimated_finish": _ts(job.estimated_finish),
        "trained_tokens": job.trained_tokens,
        "result_files": [],
        "error": job.error,
        "seed": job.seed,
        "integrations": [],
        "metadata": job.metadata,
        "suffix": job.suffix or None,
        "estimated_tokens": job.estimated_tokens,
        "queue_position": place.position if place else None,
        "estimated_start": _ts(place.estimated_start) if place else None,
        "wait_reason": (job.wait_reason or None) if job.status == FineTuningJob.Status.QUEUED else None,
        "accelerators": job.accelerators,
        "memory_per_accelerator": job.memory_bytes,  # what the scheduler reserves on each
        "peak_memory_bytes": job.peak_memory_bytes,  # what the run measured, once it has succeeded
        "preemptions": job.preemptions,
        "progress": round(job.progress, 4),
        "attempts": job.attempts,
        "effective_training_time": job.effective_training_time,
        "dataset_version": job.dataset_version_id,
        "evaluation": job.evaluation,
    }


def event_object(row: JobEvent) -> dict:
    return {
        "id": row.pk,
        "object": "fine_tuning.job.event",
        "created_at": _ts(row.created_at),
        "level": row.level,
        "message": row.message,
        "type": row.type,
        "data": row.data,
    }


def checkpoint_object(row: Checkpoint, job: FineTuningJob) -> dict:
    return {
        "id": row.pk,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _ts(row.created_at),
        "fine_tuned_model_checkpoint": f"{job.fine_tuned_model or job.base_model_id}:ckpt-step-{row.step_number}",
        "fine_tuning_job_id": job.pk,
        "step_number": row.step_number,
        "metrics": {"step": row.step_number, **row.metrics},
    }


class JobsView(KeyScopedMixin, APIView):
    model = FineTuningJob
    required_scope = Scope.FINE_TUNING

    def get(self, request):
        paginator = CursorPagination()
        page = paginator.paginate_queryset(self.get_queryset().select_related("organization"), request, self)
        places = queue.places(page)
        return paginator.get_paginated_response([job_object(job, places.get(job.pk)) for job in page])

    def post(self, request):
        body = request.data if isinstance(request.data, dict) else {}
        allowed = {
            "model",
            "training_file",
            "validation_file",
            "hyperparameters",
            "method",
            "suffix",
            "seed",
            "metadata",
            "integrations",
            "accelerators",
        }
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise exceptions.ValidationError({unknown[0]: [f"Unrecognized argument: {unknown[0]}."]})
        if body.get("integrations"):
            raise exceptions.ValidationError({"integrations": ["Integrations are not supported."]})
        for required in ("model", "training_file"):
            if not body.get(required):
                raise exceptions.ValidationError({required: [f"'{required}' is required."]})
        job = jobs.create(
            organization_id=self.principal.organization_id,
            model=body["model"],
            training_file=body["training_file"],
            validation_file=body.get("validation_file"),
            hyperparameters=body.get("hyperparameters"),
            method=body.get("method"),
            suffix=body.get("suffix"),
            seed=body.get("seed"),
            metadata=body.get("metadata"),
            accelerators=body.get("accelerators"),
            actor=self.actor,
        )
        return Response(job_object(job, queue.places([job]).get(job.pk)))


class JobView(KeyScopedMixin, APIView):
    model = FineTuningJob
    required_scope = Scope.FINE_TUNING

    def job(self, job_id: str) -> FineTuningJob:
        row = self.get_queryset().select_related("organization").filter(pk=job_id).first()
        if row is None:
            raise exceptions.NotFound(f"No fine-tuning job found with id {job_id}.")
        return row

    def get(self, request, job_id: str):
        job = self.job(job_id)
        return Response(job_object(job, queue.places([job]).get(job.pk)))


class JobActionView(JobView):
    action_name = ""
    http_method_names = ["post", "options"]  # not the job's GET: 405 and an Allow that says so

    def post(self, request, job_id: str):
        job = self.job(job_id)
        act = {"cancel": jobs.cancel, "pause": jobs.pause, "resume": jobs.resume}[self.action_name]
        act(job.pk, organization_id=self.principal.organization_id, actor=self.actor)
        job = self.job(job_id)
        return Response(job_object(job, queue.places([job]).get(job.pk)))


class JobEventsView(JobView):
    def get(self, request, job_id: str):
        job = self.job(job_id)
        paginator = CursorPagination()
        page = paginator.paginate_queryset(JobEvent.objects.filter(job=job), request, self)
        return paginator.get_paginated_response([event_object(row) for row in page])


class JobCheckpointsView(JobView):
    def get(self, request, job_id: str):
        job = self.job(job_id)
        paginator = CursorPagination()
        page = paginator.paginate_queryset(Checkpoint.objects.filter(job=job), request, self)
        return paginator.get_paginated_response([checkpoint_object(row, job) for row in page])
