from django.urls import path

from batches import api

urlpatterns = [
    path("batches", api.batches, name="batches"),
    path("batches/<str:batch_id>", api.batch, name="batch"),
    path("batches/<str:batch_id>/cancel", api.cancel, name="batch-cancel"),
]
