"""Runs: what one fitted head or fine-tune leaves on disk, and the record that vouches for it."""

from featpipe.runs.record import (
    RECORD_FILE,
    RECORD_SCHEMA,
    RunRecord,
    RunRecordError,
    amend_record,
    read_record,
    run_problem,
    write_run_files,
)

__all__ = ["RECORD_FILE", "RECORD_SCHEMA", "RunRecord", "RunRecordError", "amend_record", "read_record", "run_problem", "write_run_files"]
