import json

from django.http import HttpResponse, JsonResponse

from catalog.models import Item


def index(request):
    return HttpResponse("catalog ok")


def items(request):
    if request.method == "POST":
        item = Item.objects.create(name=json.loads(request.body or b"{}").get("name", ""))
        return JsonResponse({"id": item.id}, status=201)
    return JsonResponse(
        [{"id": i.id, "name": i.name} for i in Item.objects.order_by("id")], safe=False
    )
