from django.urls import path, re_path

from serving.gateway import embeddings, inference, responses, views

urlpatterns = [
    path("chat/completions", inference.chat_completions, name="chat-completions"),
    path("completions", inference.completions, name="completions"),
    path("embeddings", embeddings.embeddings, name="embeddings"),
    path("responses", responses.create_response, name="responses"),
    path("models", views.list_models, name="models"),
    re_path(r"^models/(?P<model_id>[^/]+)$", views.retrieve_model, name="model"),
    re_path(r"^(?P<rest>.*)$", views.unknown_route, name="unknown"),
]
