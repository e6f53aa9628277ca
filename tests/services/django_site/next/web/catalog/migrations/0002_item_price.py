from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [
        migrations.AddField(model_name="item", name="price", field=models.IntegerField(null=True)),
    ]
