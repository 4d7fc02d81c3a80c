from django.urls import path

from rooms.api import views

urlpatterns = [
    path("rooms/<int:room_id>/", views.RoomDetailView.as_view(), name="room-detail"),
    path("rooms/<int:room_id>/messages/", views.RoomMessagesView.as_view(), name="room-messages"),
    path("webhooks/chat/", views.ChatWebhookView.as_view(), name="chat-webhook"),
]
