from django.db import migrations, models

DEMO_MODEL = "smollm2-135m-instruct"


def all_linear(apps, schema_editor):
    # An empty default lets fine-tuning's "auto" take every linear layer: measured to learn where
    # q_proj + v_proj alone did not (bench/README.md, the "auto" grid).
    models_ = apps.get_model("catalog", "BaseModel").objects
    models_.filter(pk=DEMO_MODEL, default_lora_targets=["q_proj", "v_proj"]).update(default_lora_targets=[])


class Migration(migrations.Migration):
    dependencies = [("catalog", "0004_basemodel_default_max_tokens")]
    operations = [
        migrations.AlterField(
            model_name="basemodel",
            name="default_lora_targets",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='LoRA targets for "auto", e.g. ["q_proj", "v_proj"]; empty: every linear layer.',
            ),
        ),
        migrations.RunPython(all_linear, migrations.RunPython.noop),
    ]
