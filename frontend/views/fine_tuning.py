"""Training data and fine-tuning jobs."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import FileResponse, Http404, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from batches import selectors as batches_selectors
from catalog import selectors as catalog
from compute import selectors as compute_selectors
from fine_tuning import jobs as fine_tuning_jobs
from fine_tuning import selectors as fine_tuning_selectors
from fine_tuning import services as fine_tuning_services
from fine_tuning.models import File, FineTuningJob
from fine_tuning.uploads import HashingUploadHandler
from frontend.forms import (
    FineTuneForm,
    UploadForm,
)
from frontend.views.access import nav_context, org_page
from tenancy import services
from tenancy.audit import Actor
from tenancy.roles import Permission as P


def _hashed_upload(request):
    """The uploaded file, received as the files API receives it (straight to disk, hashed,
    cut off past FILE_UPLOAD_MAX_BYTES), or an error message."""
    handler = HashingUploadHandler(request, settings.FILE_UPLOAD_MAX_BYTES)
    request.upload_handlers = [handler]
    uploaded = request.FILES.get("file")
    if handler.too_large:
        return None, f"The file is too large: the limit is {settings.FILE_UPLOAD_MAX_BYTES // (1 << 20)} MB."
    if uploaded is None or not hasattr(uploaded, "sha256"):
        return None, "Choose a .jsonl file to upload."
    return uploaded, None


@csrf_exempt  # the upload handlers must be set before the body is read; CSRF is checked right after
@org_page(P.JOBS_VIEW)
def data_page(request, access):
    """Training files: upload (with progress), and each file's validation status."""
    error = None
    if request.method == "POST":
        if not access.can(P.JOBS_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        uploaded, error = _hashed_upload(request)
        refused = CsrfViewMiddleware(lambda _: None).process_view(request, None, (), {})
        if refused is not None:
            return refused
        if uploaded is not None:
            try:
                row = fine_tuning_services.upload_file(
                    organization_id=access.organization.pk,
                    uploaded=uploaded,
                    purpose="fine-tune",
                    actor=Actor.from_request(request),
                )
            except services.ServiceError as exc:
                error = exc.message
            else:
                target = reverse("frontend:data_file", args=[access.organization.slug, row.pk])
                if request.headers.get("X-Requested-With") == "upload":
                    return JsonResponse({"redirect": target})
                return redirect(target)
        if request.headers.get("X-Requested-With") == "upload":
            return JsonResponse({"error": error}, status=400)
    context = nav_context(
        access,
        "data",
        files=list(fine_tuning_selectors.files(access.organization.pk)[:200]),
        datasets=fine_tuning_selectors.datasets(access.organization.pk),
        batches=batches_selectors.batches_of(access.organization.pk),
        form=UploadForm(),
        error=error,
        can_manage=access.can(P.JOBS_MANAGE),
    )
    return render(request, "frontend/data.html", context, status=400 if error else 200)


@org_page(P.JOBS_VIEW, model=File)
def data_file(request, access, file_id: str):
    found = fine_tuning_selectors.file(access.organization.pk, file_id)
    if found is None:
        raise Http404("No such file")
    if request.method == "POST":
        if not access.can(P.JOBS_MANAGE):
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        _add_version(request, access.organization.pk, found)
        return redirect("frontend:data_file", org=access.organization.slug, file_id=found.pk)
    context = nav_context(
        access,
        "data",
        file=found,
        report=found.report or {},
        datasets=fine_tuning_selectors.datasets(access.organization.pk),
        versions=list(found.dataset_versions.select_related("dataset").order_by("dataset__name", "number")),
    )
    template = "frontend/data_file_status.html" if request.htmx else "frontend/data_file.html"
    return render(request, template, context)


@org_page(P.JOBS_VIEW, model=File)  # another organization's file is a 404 before the method is looked at
@require_GET
def download_file(request, access, file_id: str):
    """A file's content (a batch's output or error file, say), as the API's /v1/files/{id}/content."""
    found = fine_tuning_selectors.file(access.organization.pk, file_id)
    if found is None or found.deleted_at is not None:
        raise Http404("No such file")
    try:
        stream = default_storage.open(found.storage_key, "rb")
    except FileNotFoundError:
        raise Http404("The file's content is no longer stored") from None
    return FileResponse(stream, as_attachment=True, filename=found.filename, content_type="application/jsonl")


def _add_version(request, organization_id: int, found: File) -> None:
    """The file becomes the next version of a dataset, which is made if it does not exist yet."""
    name = request.POST.get("dataset", "").strip()
    actor = Actor.from_request(request)
    try:
        with transaction.atomic():
            dataset = fine_tuning_selectors.dataset_named(organization_id, name)
            if dataset is None:
                dataset = fine_tuning_services.create_dataset(organization_id=organization_id, name=name, actor=actor)
            version = fine_tuning_services.add_dataset_version(
                dataset.pk,
                organization_id=organization_id,
                file_id=found.pk,
                note=request.POST.get("note", "").strip()[:500],
                actor=actor,
            )
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Added as version {version.number} of {dataset.name}.")


def _fine_tune_form(access, data=None, initial_file: str | None = None) -> FineTuneForm:
    organization_id = access.organization.pk
    tunable = [m.pk for m in catalog.visible_base_models(organization_id) if m.fine_tunable]
    ready = [
        (f.pk, f"{f.filename} ({f.pk}, {f.report.get('examples', 0)} examples)")
        for f in fine_tuning_selectors.files(organization_id).filter(
            status=File.Status.PROCESSED, purpose=File.Purpose.FINE_TUNE
        )[:200]
    ]
    return FineTuneForm(data, models=tunable, files=ready, initial={"training_file": initial_file})


def _form_error(form, exc) -> None:
    param = (exc.param or "").removeprefix("hyperparameters.")
    form.add_error(param if param in form.fields else None, exc.message)


@org_page(P.JOBS_VIEW)
def fine_tuning_page(request, access):
    can_manage = access.can(P.JOBS_MANAGE)
    chosen = request.GET.get("training_file")
    form = _fine_tune_form(access, request.POST or None, chosen) if can_manage else None
    if request.method == "POST":
        if not can_manage:
            return render(request, "frontend/forbidden.html", {"organization": access.organization}, status=403)
        if form.is_valid():
            data = form.cleaned_data
            try:
                job = fine_tuning_jobs.create(
                    organization_id=access.organization.pk,
                    model=data["model"],
                    training_file=data["training_file"],
                    validation_file=data["validation_file"] or None,
                    hyperparameters=form.hyperparameters(),
                    suffix=data["suffix"] or None,
                    actor=Actor.from_request(request),
                )
            except services.ServiceError as exc:
                _form_error(form, exc)
            else:
                return redirect("frontend:job", org=access.organization.slug, job_id=job.pk)
    context = nav_context(
        access,
        "fine_tuning",
        jobs=fine_tuning_selectors.jobs_of(access.organization.pk),
        form=form,
        capacity=compute_selectors.training_capacity(),
    )
    return render(request, "frontend/fine_tuning.html", context)


@org_page(P.JOBS_MANAGE)
@require_POST
def fine_tuning_estimate(request, access):
    """The form's estimate before launch (an htmx fragment): "auto" made concrete, tokens, cost, time."""
    form = _fine_tune_form(access, request.POST)
    estimate, error = None, None
    if form.is_valid():
        try:
            estimate = fine_tuning_jobs.estimate(
                organization_id=access.organization.pk,
                model=form.cleaned_data["model"],
                training_file=form.cleaned_data["training_file"],
                hyperparameters=form.hyperparameters(),
            )
        except services.ServiceError as exc:
            error = exc.message
    else:
        error = " ".join(f"{form[name].label}: {' '.join(errs)}" for name, errs in form.errors.items())
    return render(request, "frontend/fine_tuning_estimate.html", {"estimate": estimate, "error": error})


@org_page(P.JOBS_VIEW, model=FineTuningJob)
def job_page(request, access, job_id: str):
    found = fine_tuning_selectors.job(access.organization.pk, job_id)
    if found is None:
        raise Http404("No such job")
    context = nav_context(
        access,
        "fine_tuning",
        job=found,
        chart=fine_tuning_selectors.loss_curve(found),
        events=list(found.events.order_by("-created_at")[:50]),
        checkpoints=list(found.checkpoints.order_by("step_number")),
        running=found.status not in FineTuningJob.FINISHED,
    )
    template = "frontend/job_live.html" if request.htmx else "frontend/job.html"
    return render(request, template, context)


@org_page(P.JOBS_MANAGE, model=FineTuningJob)
@require_POST
def job_action(request, access, job_id: str, verb: str):
    change = {"cancel": fine_tuning_jobs.cancel, "pause": fine_tuning_jobs.pause, "resume": fine_tuning_jobs.resume}
    if verb not in change or fine_tuning_selectors.job(access.organization.pk, job_id) is None:
        raise Http404("No such job or action")
    try:
        change[verb](job_id, organization_id=access.organization.pk, actor=Actor.from_request(request))
    except services.ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("frontend:job", org=access.organization.slug, job_id=job_id)
