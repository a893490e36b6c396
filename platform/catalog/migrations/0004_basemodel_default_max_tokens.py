from django.core.validators import MinValueValidator
from django.db import migrations, models

DEMO_MODEL = "smollm2-135m-instruct"


def cap_the_demo_model(apps, schema_editor):
    # A 135M model at temperature 1 rambles: 256 tokens is a full answer and ~15 s on a laptop CPU.
    apps.get_model("catalog", "BaseModel").objects.filter(pk=DEMO_MODEL).update(default_max_tokens=256)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_finetunedmodel")]

    operations = [
        migrations.AddField(
            model_name="basemodel",
            name="default_max_tokens",
            field=models.PositiveIntegerField(
                default=1024,
                help_text="Tokens a completion may generate when the request sets no max_tokens. The gateway always "
                "sends an explicit cap, so rate limits and reservations hold.",
                validators=[MinValueValidator(1)],
            ),
        ),
        migrations.RunPython(cap_the_demo_model, migrations.RunPython.noop),
    ]
