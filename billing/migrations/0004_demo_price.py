"""A list price for the demo model, so that `make run` shows real costs: 0.10 per million prompt
tokens, 0.20 per million completion tokens, 1.00 per million trained tokens (nano-units per token)."""

from datetime import UTC, datetime

from django.db import migrations

DEMO_MODEL = "smollm2-135m-instruct"


def add(apps, schema_editor):
    BaseModel = apps.get_model("catalog", "BaseModel")
    Price = apps.get_model("billing", "Price")
    if BaseModel.objects.filter(pk=DEMO_MODEL).exists() and not Price.objects.filter(model=DEMO_MODEL).exists():
        Price.objects.create(
            model=DEMO_MODEL,
            input_per_token=100,
            output_per_token=200,
            training_per_token=1000,
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            note="demo price",
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_price_book_and_ledger_cost"), ("catalog", "0005_demo_model_all_linear")]
    operations = [migrations.RunPython(add, migrations.RunPython.noop)]
