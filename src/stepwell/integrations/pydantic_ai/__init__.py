"""Run Pydantic AI agents durably on stepwell (`pip install 'stepwell[pydantic-ai]'`)."""
from stepwell.integrations.pydantic_ai._durability import StepwellDurability

__all__ = ["StepwellDurability"]
