"""Jobs, schedules and sensors."""

from jobs.data import ast_data_job
from jobs.sensors import corpus_change_sensor

__all__ = ["ast_data_job", "corpus_change_sensor"]
