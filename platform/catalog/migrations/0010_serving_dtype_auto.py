from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0009_basemodel_features")]

    operations = [
        migrations.AlterField(
            model_name="basemodel",
            name="serving_dtype",
            field=models.CharField(
                choices=[
                    ("auto", "auto: bfloat16 where the hardware computes in it natively, else float32"),
                    ("float32", "float32"),
                    ("bfloat16", "bfloat16"),
                    ("float16", "float16"),
                ],
                default="float32",
                help_text="The weights' type in its replicas; auto is decided on the node that serves it. float32 "
                "keeps a row's greedy answer the same whatever else is in its batch; bfloat16 does not.",
                max_length=16,
            ),
        ),
    ]
