"""Settings of the example Django project: one app (orders) and stepwell."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["orders", "stepwell.integrations.django"]
ROOT_URLCONF = "shopsite.urls"
USE_TZ = True
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("DJANGO_DB", str(BASE_DIR / "django.sqlite3")),
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STEPWELL = {
    "APP": "orders.functions:functions",
    "DB": os.environ.get("STEPWELL_DB", f"sqlite:///{BASE_DIR / 'stepwell.db'}"),
    # Web processes only send events; `python manage.py stepwell worker` runs the functions.
    "WORKER": False,
}
