"""Carillon's Django project package: settings, URLs, ASGI entry point, Celery apps."""
