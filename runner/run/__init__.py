"""Running a film: the scheduler, shot jobs and their journal, execution, render, provenance."""
