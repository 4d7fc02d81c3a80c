from django.urls import path

from notifications.api import topics, views
from notifications.providers.twilio import views as twilio_views

urlpatterns = [
    path("events/", views.EventListView.as_view(), name="event-list"),
    path("events/<uuid:pk>/", views.EventDetailView.as_view(), name="event-detail"),
    path("events/<uuid:pk>/cancel/", views.EventCancelView.as_view(), name="event-cancel"),
    path("notifications/", views.NotificationListView.as_view(), name="notification-list"),
    path("notifications/<int:notification_id>/read/", views.NotificationReadView.as_view(), name="notification-read"),
    path("notifications/read-all/", views.NotificationReadAllView.as_view(), name="notification-read-all"),
    *(
        path(f"failed-jobs/<int:failed_job_id>/{action}/", views.FailedJobActionView.as_view(),
             {"action": action}, name=f"failed-job-{action}")
        for action in ("replay", "discard")
    ),
    path("topics/", topics.TopicListView.as_view(), name="topic-list"),
    path("topics/<str:key>/", topics.TopicDetailView.as_view(), name="topic-detail"),
    path("topics/<str:key>/subscribers/", topics.TopicSubscribersView.as_view(), name="topic-subscribers"),
    path(
        "topics/<str:key>/subscribers/remove/", topics.TopicSubscribersView.as_view(), {"action": "remove"},
        name="topic-subscribers-remove",
    ),
    path("preferences/", views.PreferenceView.as_view(), name="preferences"),
    path("preferences/digest/", views.DigestPreferenceView.as_view(), name="preferences-digest"),
    path("webhooks/twilio/<int:delivery_id>/", twilio_views.twilio_status_callback, name="twilio-status-callback"),
]
