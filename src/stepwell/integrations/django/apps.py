"""The Django app config: `INSTALLED_APPS = [..., "stepwell.integrations.django"]`."""

from __future__ import annotations

from django.apps import AppConfig


class StepwellConfig(AppConfig):
    name = "stepwell.integrations.django"
    label = "stepwell"
    verbose_name = "stepwell"

    def ready(self) -> None:
        # Fail at start-up, not on the first send, when settings.STEPWELL is wrong.
        from stepwell.integrations.django.setup import load_apps, settings_dict

        load_apps(settings_dict().get("APP"))
