"""A list price for the catalog's embedding model: 0.02 per million input tokens (nano-units per
token); embeddings generate nothing and train nothing."""

from datetime import UTC, datetime

from django.db import migrations

EMBEDDING_MODEL = "all-minilm-l6-v2"


def add(apps, schema_editor):
    BaseModel = apps.get_model("catalog", "BaseModel")
    Price = apps.get_model("billing", "Price")
    if BaseModel.objects.filter(pk=EMBEDDING_MODEL).exists() and not Price.objects.filter(model=EMBEDDING_MODEL).exists():
        Price.objects.create(
            model=EMBEDDING_MODEL,
            input_per_token=20,
            output_per_token=0,
            training_per_token=0,
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            note="list price",
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0011_sign_up_credit_once"), ("catalog", "0008_basemodel_kind")]
    operations = [migrations.RunPython(add, migrations.RunPython.noop)]
