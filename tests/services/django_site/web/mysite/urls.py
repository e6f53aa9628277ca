from catalog import views
from django.urls import path

urlpatterns = [path("", views.index), path("items", views.items)]
