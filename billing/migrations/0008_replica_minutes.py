"""Dedicated endpoints are billed per replica-minute: a price-book rate, a ledger meter and its
rollup sums. The demo model's list price gets a demo rate (0.002 per replica-minute), so `make run`
shows what a dedicated endpoint costs; no replica-minute was billed before, so giving the existing
version that rate reprices nothing."""

from django.db import migrations, models

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_RATE = 2_000_000  # nano-units per replica-minute


def demo_rate(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    Price.objects.filter(model=DEMO_MODEL, organization=None, note="demo price").update(replica_minute=DEMO_RATE)


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_payments")]

    operations = [
        migrations.AddField(
            model_name="price",
            name="replica_minute",
            field=models.PositiveBigIntegerField(
                default=0, help_text="Nano-units per replica-minute of a dedicated endpoint serving the model."
            ),
        ),
        migrations.AddField(
            model_name="usageevent",
            name="replica_minutes",
            field=models.PositiveBigIntegerField(default=0, help_text="A dedicated endpoint's metered time."),
        ),
        migrations.AddField(
            model_name="usagerollup", name="replica_minutes", field=models.PositiveBigIntegerField(default=0)
        ),
        migrations.AddField(model_name="usagerollup", name="replica_cost", field=models.PositiveBigIntegerField(default=0)),
        migrations.RunPython(demo_rate, migrations.RunPython.noop),
    ]
